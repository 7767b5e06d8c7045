//! The shared fixture: start the real server, talk to its console, make licence keys.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs a `gatehouse` command to completion; returns (success, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("gatehouse runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A vendor key pair for tests and a config file that trusts it.
pub struct Licensing {
    pub dir: tempfile::TempDir,
    pub signing_key: PathBuf,
    pub public_key: PathBuf,
}

impl Licensing {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ok, _, err) = run(&[
            "licence",
            "keygen",
            "--out",
            dir.path().to_str().expect("utf8"),
        ]);
        assert!(ok, "keygen: {err}");
        Self {
            signing_key: dir.path().join("licence-signing.key"),
            public_key: dir.path().join("licence-signing.pub"),
            dir,
        }
    }

    /// Issues a key; `extra` are more `licence issue` flags.
    pub fn issue(&self, serial: &str, installation_code: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "licence",
            "issue",
            "--signing-key",
            self.signing_key.to_str().expect("utf8"),
            "--serial",
            serial,
            "--installation-code",
            installation_code,
            "--customer",
            "ACME Test",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = run(&args);
        assert!(ok, "issue: {err}");
        out
    }

    /// A config file trusting this key pair, in `dir`.
    pub fn config_file(&self, dir: &Path, extra: &str) -> PathBuf {
        let path = dir.join("gatehouse.toml");
        std::fs::write(
            &path,
            format!(
                "[licence]\npublic_key_file = \"{}\"\n{extra}",
                self.public_key.display()
            ),
        )
        .expect("write config");
        path
    }
}

/// A running `gatehouse serve`, killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    pub data: PathBuf,
    pub stderr: PathBuf,
}

impl Server {
    /// Starts `gatehouse serve --data DATA --listen 127.0.0.1:0 [--config CONFIG]` and waits
    /// for its "Gatehouse console:" line.
    pub fn start(data: &Path, config: Option<&Path>) -> Self {
        Self::start_on(data, config, "127.0.0.1:0")
    }

    /// As [`Server::start`], listening on `listen` (to come back on the same port after a
    /// restart).
    pub fn start_on(data: &Path, config: Option<&Path>, listen: &str) -> Self {
        let stderr = data.with_extension("stderr.log");
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--data"])
            .arg(data)
            .args(["--listen", listen]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("server starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("Gatehouse console: ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        };
        let base = url.trim_end_matches("/admin").to_string();
        Self {
            child,
            base,
            data: data.to_path_buf(),
            stderr,
        }
    }

    /// SIGTERM, as a service manager stops it; waits for the process to end and returns how it
    /// ended. A watchdog sends SIGKILL after a minute, so a hang shows as a killed process.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM was sent");
        let (done, stopped) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if stopped.recv_timeout(Duration::from_secs(60)).is_err() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        });
        let status = self.child.wait().expect("wait for the server");
        let _ = done.send(());
        let _ = watchdog.join();
        status
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn console(&self) -> Console {
        Console::new(&self.base)
    }

    /// `GET /metrics`, as a monitoring system reads it (no session).
    pub async fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("the metrics text")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser-like HTTPS client: a cookie jar, no automatic redirects, the appliance's
/// self-signed certificate accepted.
pub struct Console {
    pub client: reqwest::Client,
    pub base: String,
    /// The CSRF token of the last page fetched.
    pub csrf: String,
}

pub fn client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .cookie_store(true)
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The value of the first `name="csrf"` field in a page.
pub fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(html[at..].split('"').next()?.to_string())
}

pub struct Answer {
    pub status: u16,
    pub location: String,
    pub body: String,
}

impl Console {
    pub fn new(base: &str) -> Self {
        Self {
            client: client(),
            base: base.to_string(),
            csrf: String::new(),
        }
    }

    async fn answer(&mut self, resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.text().await.unwrap_or_default();
        if let Some(t) = csrf_of(&body) {
            self.csrf = t;
        }
        Answer {
            status,
            location,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        self.answer(resp).await
    }

    /// Posts a form with the current CSRF token added.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        let csrf = self.csrf.clone();
        all.push(("csrf", &csrf));
        self.post_raw(path, &all).await
    }

    /// Posts a form exactly as given (no CSRF token added).
    pub async fn post_raw(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .form(fields)
            .send()
            .await
            .expect("POST");
        self.answer(resp).await
    }

    /// Posts a multipart form with the current CSRF token added; `files` are (field, name, bytes).
    pub async fn post_multipart(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        files: &[(&str, &str, Vec<u8>)],
    ) -> Answer {
        let mut form = reqwest::multipart::Form::new().text("csrf", self.csrf.clone());
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        for (field, name, bytes) in files {
            form = form.part(
                field.to_string(),
                reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
            );
        }
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .multipart(form)
            .send()
            .await
            .expect("POST multipart");
        self.answer(resp).await
    }

    pub async fn sign_in(&mut self, user: &str, password: &str) -> Answer {
        self.get("/admin/login").await;
        self.post(
            "/admin/login",
            &[("username", user), ("password", password)],
        )
        .await
    }

    /// Signs in with the factory password and walks the wizard: password, licence (a key, or
    /// the evaluation with `None`), keep the certificate, finish.
    pub async fn complete_wizard(&mut self, new_password: &str, licence_key: Option<&str>) {
        let a = self.sign_in("admin", "leo").await;
        assert_eq!(
            (a.status, a.location.as_str()),
            (303, "/admin/wizard"),
            "{}",
            a.body
        );
        self.get("/admin/wizard").await;
        let a = self
            .post(
                "/admin/wizard/password",
                &[("password", new_password), ("confirm", new_password)],
            )
            .await;
        assert_eq!(a.status, 303, "password step: {}", a.body);
        self.get("/admin/wizard").await;
        let a = match licence_key {
            Some(key) => {
                self.post_multipart(
                    "/admin/wizard/licence",
                    &[("key", key), ("agree", "yes"), ("choice", "key")],
                    &[],
                )
                .await
            }
            None => {
                self.post_multipart(
                    "/admin/wizard/licence",
                    &[("agree", "yes"), ("choice", "evaluation")],
                    &[],
                )
                .await
            }
        };
        assert_eq!(a.status, 303, "licence step: {}", a.body);
        self.get("/admin/wizard").await;
        let a = self
            .post_multipart("/admin/wizard/certificate", &[("choice", "keep")], &[])
            .await;
        assert_eq!(a.status, 303, "certificate step: {}", a.body);
        self.get("/admin/wizard").await;
        let a = self.post("/admin/wizard/finish", &[]).await;
        assert_eq!(
            (a.status, a.location.as_str()),
            (303, "/admin"),
            "finish: {}",
            a.body
        );
    }
}

/// A fresh data folder inside a temp dir that lives as long as the returned guard.
pub fn fresh_data() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    (dir, data)
}

/// Runs `gatehouse setup` on `data` with `password` as the administrator's (the wizard done
/// unattended: evaluation, generated certificate); returns what it printed.
pub fn finish_setup(data: &Path, password: &str) -> String {
    run_setup(data, password, &[])
}

/// As [`finish_setup`], activating a licence issued by `licensing` for this installation
/// (`issue_flags`: more `licence issue` flags, e.g. `--max-users 2`). Returns the config file
/// that trusts `licensing`'s key, for `Server::start`.
pub fn finish_setup_licensed(
    data: &Path,
    password: &str,
    licensing: &Licensing,
    issue_flags: &[&str],
) -> PathBuf {
    let code = installation_code(data);
    let key = licensing.issue("GH-TEST-1", &code, issue_flags);
    let key_file = data.with_extension("licence");
    std::fs::write(&key_file, key).expect("write key");
    let folder = data.parent().expect("data has a parent");
    let config = licensing.config_file(folder, "");
    run_setup(
        data,
        password,
        &[
            "--config",
            config.to_str().expect("utf8"),
            "--licence-file",
            key_file.to_str().expect("utf8"),
            "--accept-licence",
        ],
    );
    config
}

/// `gatehouse setup --data DATA --admin-password-file F EXTRA…`: its output.
fn run_setup(data: &Path, password: &str, extra: &[&str]) -> String {
    let password_file = data.with_extension("admin-password");
    std::fs::write(&password_file, format!("{password}\n")).expect("write");
    let mut args = vec![
        "setup",
        "--data",
        data.to_str().expect("utf8"),
        "--admin-password-file",
        password_file.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = run(&args);
    assert!(ok, "setup: {err}");
    out
}

/// The installation code of a data folder that has been started once.
pub fn installation_code(data: &Path) -> String {
    let (ok, out, err) = run(&["licence", "code", "--data", data.to_str().expect("utf8")]);
    assert!(ok, "licence code: {err}");
    out.trim().to_string()
}
