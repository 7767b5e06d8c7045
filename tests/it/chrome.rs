//! The browser fixture of the browser tests: Debian's chromium, driven by chromedriver through
//! fantoccini. [`Chrome::start`] runs chromedriver on a free port in its own process group,
//! waits until it is ready and opens a headless session that trusts the appliance's
//! self-signed certificate (and, if asked, saves downloads into a folder of the test's);
//! [`Chrome::with_session`] runs a test body and always closes the session and kills the
//! process group, even when the body panics. Also the small page helpers the tests share (find,
//! type, click, screenshots, downloads). This module owns chromedriver, chromium and the browser
//! profile; it must not touch the server's data folder.

#![allow(dead_code)]

use std::future::Future;
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

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

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
/// network except for the appliance under test; with `downloads`, files are saved there
/// without asking.
fn capabilities(profile: &Path, downloads: Option<&Path>) -> Capabilities {
    let mut options = json!({
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
    });
    if let Some(dir) = downloads {
        options["prefs"] = json!({
            "download.default_directory": dir.display().to_string(),
            "download.prompt_for_download": false,
            "download.directory_upgrade": true,
            "safebrowsing.enabled": false,
        });
    }
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": options,
    });
    match caps {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// A chromium session and the chromedriver behind it.
pub struct Chrome {
    client: Client,
    // Dropped after the session is closed: kills what is left of the process group.
    driver: Chromedriver,
    profile: tempfile::TempDir,
}

impl Chrome {
    /// Starts chromedriver and a headless chromium session with a fresh profile, a 1280×900
    /// window and generous timeouts (page loads 60 s, finding an element waits up to 15 s).
    pub async fn start(download_dir: Option<&Path>) -> Chrome {
        let driver = Chromedriver::start().await;
        let profile = tempfile::tempdir().expect("profile dir");
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities(profile.path(), download_dir))
            .connect(&driver.url)
            .await
            .expect("a chromium session");
        client
            .set_window_size(1280, 900)
            .await
            .expect("window size");
        client
            .update_timeouts(TimeoutConfiguration::new(
                Some(Duration::from_secs(30)),
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(15)),
            ))
            .await
            .expect("timeouts");
        Chrome {
            client,
            driver,
            profile,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `body` with the session as its own task, so that a failed assertion still lets
    /// the session close (and chromium exit) before the panic is passed on; then kills the
    /// process group. On failure, `diagnostics()` (e.g. the server's log) is printed first.
    pub async fn with_session<F, Fut>(self, diagnostics: impl FnOnce() -> String, body: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Chrome {
            client,
            driver,
            profile,
        } = self;
        let outcome = tokio::spawn(body(client.clone())).await;
        let closed = client.close().await;
        drop(driver);
        drop(profile);
        if let Err(e) = outcome {
            eprintln!("{}", diagnostics());
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("the browser walk did not finish: {e}"),
            }
        }
        closed.expect("close the browser session");
    }
}

// ---- Page helpers -----------------------------------------------------------------------------

/// The page's URL and a piece of its HTML, for failure messages.
pub async fn where_am_i(c: &Client) -> String {
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

/// The element for a CSS selector; the session's implicit wait lets it appear after a
/// navigation.
pub async fn find(c: &Client, css: &str) -> Element {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e,
        Err(e) => panic!("no `{css}` ({e}) {}", where_am_i(c).await),
    }
}

/// The link whose text is exactly `text`.
pub async fn link(c: &Client, text: &str) -> Element {
    match c.find(Locator::LinkText(text)).await {
        Ok(e) => e,
        Err(e) => panic!("no link `{text}` ({e}) {}", where_am_i(c).await),
    }
}

/// The text of the element `css` matches. Right after a click the element found may belong to
/// the page being left (a stale element): it is looked up again, a bounded number of times.
pub async fn text_of(c: &Client, css: &str) -> String {
    let mut last = None;
    for _ in 0..5 {
        match find(c, css).await.text().await {
            Ok(text) => return text,
            Err(e) => last = Some(e),
        }
    }
    panic!("`{css}` kept going stale: {last:?} {}", where_am_i(c).await)
}

/// The path of the current URL.
pub async fn path(c: &Client) -> String {
    c.current_url()
        .await
        .expect("current url")
        .path()
        .to_string()
}

pub async fn type_into(c: &Client, css: &str, text: &str) {
    let field = find(c, css).await;
    field.clear().await.expect("clear field");
    field.send_keys(text).await.expect("type");
}

pub async fn click(c: &Client, css: &str) {
    find(c, css).await.click().await.expect("click");
}

/// Clicks what submits a form and waits until the browser has left the page (its root element
/// is gone), so that what is read next is the answer's, never the old page's.
pub async fn click_to_new_page(c: &Client, css: &str) {
    let before = c
        .find(Locator::Css("html"))
        .await
        .expect("the page has a root");
    click(c, css).await;
    // Polls the condition (bounded), as fantoccini's own waits do.
    for _ in 0..600 {
        if before.tag_name().await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "clicking `{css}` did not lead to a new page {}",
        where_am_i(c).await
    );
}

/// Picks the option with this visible label in a `<select>`.
pub async fn choose(c: &Client, css: &str, label: &str) {
    let select = find(c, css).await;
    if let Err(e) = select.select_by_label(label).await {
        panic!(
            "no option `{label}` in `{css}` ({e}) {}",
            where_am_i(c).await
        );
    }
}

/// Makes the window as tall as the page, saves a PNG of it to `to`, and puts the window back
/// to 1280×900.
pub async fn full_page_screenshot(c: &Client, to: &Path) {
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
    println!("screenshot: {} ({} bytes)", to.display(), png.len());
    c.set_window_size(1280, 900).await.expect("window size");
}

/// Waits (up to a deadline) until chromium has finished writing `name` into `dir`: it first
/// reserves `name` as an empty file, writes `<name>.crdownload` and renames that over `name`
/// when done.
pub async fn downloaded(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let partial = dir.join(format!("{name}.crdownload"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&path)
            && !text.is_empty()
            && !partial.exists()
        {
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
