//! A real browser on the user portal: Debian's chromium, driven by chromedriver through
//! fantoccini, signs in as a directory user (slapd), sees the offered desktop, clicks Connect
//! and gets the `.rdp` file downloaded into a folder of the test's, whose content is checked;
//! then releases the desktop and signs out. This module owns its chromedriver process group,
//! the browser session and the download folder.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, TimeoutConfiguration};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::common;
use crate::slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A running chromedriver in its own process group, killed with every chromium it started.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
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
        common::install_crypto();
        let http = reqwest::Client::new();
        for _ in 0..500 {
            if let Ok(resp) = http.get(format!("{}/status", driver.url)).send().await {
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                if body["value"]["ready"] == json!(true) {
                    return driver;
                }
            }
            tokio::task::yield_now().await;
        }
        panic!("chromedriver never became ready");
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = self.child.wait();
    }
}

/// Headless chromium trusting the appliance's certificate, saving downloads to `downloads`
/// without asking.
fn capabilities(profile: &Path, downloads: &Path) -> Capabilities {
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
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
                "safebrowsing.enabled": false,
            },
        },
    });
    match caps {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

async fn where_am_i(c: &Client) -> String {
    let url = c
        .current_url()
        .await
        .map(|u| u.to_string())
        .unwrap_or_default();
    let source: String = c
        .source()
        .await
        .unwrap_or_default()
        .chars()
        .take(4000)
        .collect();
    format!("at {url}:\n{source}")
}

async fn find(c: &Client, css: &str) -> Element {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e,
        Err(e) => panic!("no `{css}` ({e}) {}", where_am_i(c).await),
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    find(c, css).await.text().await.expect("element text")
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let field = find(c, css).await;
    field.clear().await.expect("clear field");
    field.send_keys(text).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    find(c, css).await.click().await.expect("click");
}

/// Waits (up to a deadline) until chromium has finished writing `name` into `dir`: it writes
/// `<name>.crdownload` and renames it when done.
async fn downloaded(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text;
        }
        tokio::task::yield_now().await;
    }
    let present: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    panic!("{name} was not downloaded; the folder holds {present:?}");
}

async fn walk(c: Client, base: String, downloads: std::path::PathBuf) {
    c.set_window_size(1280, 900).await.expect("window size");
    c.update_timeouts(TimeoutConfiguration::new(
        Some(Duration::from_secs(30)),
        Some(Duration::from_secs(60)),
        Some(Duration::from_secs(15)),
    ))
    .await
    .expect("timeouts");

    c.goto(&format!("{base}/")).await.expect("open the portal");
    find(&c, "#portal-login-form").await;

    // A wrong password is refused with a clear sentence.
    type_into(&c, "#username", "user00001").await;
    type_into(&c, "#password", "not-it").await;
    click(&c, "#sign-in").await;
    let error = text_of(&c, "#error").await;
    assert_eq!(error, "Wrong user name or password.");

    type_into(&c, "#username", "user00001").await;
    type_into(&c, "#password", GENERATED_PASSWORD).await;
    click(&c, "#sign-in").await;
    let table = text_of(&c, "#desktops").await;
    assert!(table.contains("lab-000"), "{}", where_am_i(&c).await);
    let who = text_of(&c, "#signed-in-as").await;
    assert!(who.starts_with("Signed in as"), "{who:?}");

    // Connect: the browser saves the .rdp file.
    click(&c, "#desktops button.connect").await;
    let file = downloaded(&downloads, "lab-000.rdp").await;
    assert!(file.contains("full address:s:10.0.0.10:3389\r\n"), "{file}");
    assert!(file.contains("prompt for credentials:i:1"), "{file}");

    // The download left the page as it was; reloading shows the desktop as the user's, with
    // a Release button.
    c.goto(&format!("{base}/")).await.expect("reload");
    let table = text_of(&c, "#desktops").await;
    assert!(table.contains("(yours)"), "{}", where_am_i(&c).await);
    click(&c, "#desktops button.release").await;
    let notice = text_of(&c, "#notice").await;
    assert_eq!(notice, "lab-000 was released.");

    click(&c, "#sign-out").await;
    let notice = text_of(&c, "#notice").await;
    assert_eq!(notice, "You have signed out.");
    find(&c, "#portal-login-form").await;
}

#[tokio::test]
async fn portal_in_a_real_browser_downloads_the_rdp_file() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 1,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let server = crate::portal::appliance(&slapd, dir.path(), 1);
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).expect("downloads folder");

    let driver = Chromedriver::start().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities(profile.path(), &downloads))
        .connect(&driver.url)
        .await
        .expect("a chromium session");

    // The walk runs as its own task so that a failed assertion still lets the session close.
    let outcome = tokio::spawn(walk(client.clone(), server.base.clone(), downloads)).await;
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
