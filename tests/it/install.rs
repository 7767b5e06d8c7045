//! `packaging/install.sh` end to end.
//!
//! Most tests use `--prefix DIR --no-systemd` mode, which needs neither root nor systemd: the
//! layout it installs, that the installed binary serves HTTPS, that a re-run upgrades in place
//! (configuration byte-identical, a pre-upgrade backup taken) and refuses while a server holds
//! the data folder, the `--archive file://…` source, and `--uninstall` (the binary goes,
//! configuration and data stay). They own nothing but their temporary folders and the
//! processes they start, which a guard ends on `Drop`, and never touch the system-wide paths.
//!
//! One test takes the system-wide path with its systemd services, on a throwaway Debian
//! machine booted with systemd (`machine.rs`): the services' sandbox, clean stops, an upgrade,
//! the gateway's reload, uninstalling. The gateway role is also tested in `standalone.rs`,
//! beside the broker it registers with.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::machine::Machine;

const BINARY: &str = env!("CARGO_BIN_EXE_gatehouse");
const CONSOLE_PREFIX: &str = "Gatehouse console: ";
/// Requests tried before /healthz counts as down; the server says it is ready before it prints
/// the console line, so the first one normally answers.
const HEALTH_TRIES: usize = 100;
/// Only a guard against a hung server: a healthy one prints its line at once.
const CONSOLE_LINE_DEADLINE: Duration = Duration::from_secs(120);

fn install_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/install.sh")
}

/// The paths `install.sh --prefix DIR` promises.
struct Layout {
    prefix: PathBuf,
}

impl Layout {
    /// Creates `prefix` and names it canonically, as install.sh writes it into the config.
    fn new(prefix: &Path) -> Self {
        fs::create_dir_all(prefix).expect("the prefix folder can be created");
        let prefix = fs::canonicalize(prefix).expect("the prefix folder has a canonical path");
        Self { prefix }
    }
    fn binary(&self) -> PathBuf {
        self.prefix.join("bin/gatehouse")
    }
    fn config(&self) -> PathBuf {
        self.prefix.join("etc/gatehouse/gatehouse.toml")
    }
    fn data_dir(&self) -> PathBuf {
        self.prefix.join("var/lib/gatehouse")
    }
    fn backups(&self) -> PathBuf {
        self.data_dir().join("backups")
    }

    fn pre_upgrade_backups(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(self.backups())
            .expect("the backups folder is readable")
            .map(|entry| entry.expect("a readable backups entry").path())
            .filter(|path| {
                let name = path.file_name().and_then(OsStr::to_str).unwrap_or_default();
                name.starts_with("pre-upgrade-") && name.ends_with(".ghbak")
            })
            .collect();
        found.sort();
        found
    }
}

pub(crate) fn describe(output: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs install.sh with `args`, through `bash` so the executable bit of the checkout does not
/// matter, with stdin closed.
pub(crate) fn run_install<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new("bash")
        .arg(install_script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs install.sh")
}

fn prefix_args(layout: &Layout, source: &[&OsStr]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--prefix".into(),
        layout.prefix.clone().into(),
        "--no-systemd".into(),
    ];
    args.extend(source.iter().map(|arg| arg.to_os_string()));
    args
}

fn install_from_binary(layout: &Layout) -> Output {
    let output = run_install(prefix_args(layout, &["--binary".as_ref(), BINARY.as_ref()]));
    assert!(
        output.status.success(),
        "install.sh failed:\n{}",
        describe(&output)
    );
    output
}

fn assert_installed_layout(layout: &Layout) {
    let binary = layout.binary();
    let mode = fs::metadata(&binary)
        .expect("the binary is installed")
        .permissions()
        .mode();
    assert!(
        mode & 0o111 != 0,
        "{} is not executable (mode {mode:o})",
        binary.display()
    );

    let version = Command::new(&binary)
        .arg("version")
        .output()
        .expect("the installed binary runs");
    let version_text = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.status.success() && version_text.starts_with("gatehouse "),
        "`gatehouse version`:\n{}",
        describe(&version)
    );

    let check = Command::new(&binary)
        .args(["config", "check", "--config"])
        .arg(layout.config())
        .output()
        .expect("config check runs");
    assert!(
        check.status.success(),
        "the installed configuration is invalid:\n{}",
        describe(&check)
    );

    let config = fs::read_to_string(layout.config()).expect("the configuration is readable");
    let data_dir_line = format!("data_dir = \"{}\"", layout.data_dir().display());
    assert!(
        config.contains(&data_dir_line),
        "config lacks `{data_dir_line}`:\n{config}"
    );

    assert!(
        layout.data_dir().is_dir(),
        "no data folder {}",
        layout.data_dir().display()
    );
    assert!(
        layout.backups().is_dir(),
        "no backups folder {}",
        layout.backups().display()
    );
}

/// A `gatehouse serve` started from an installed tree; killed and reaped on `Drop`.
struct Server {
    child: Child,
    base_url: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(layout: &Layout) -> Self {
        let mut child = Command::new(layout.binary())
            .arg("serve")
            .arg("--config")
            .arg(layout.config())
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the installed binary starts");

        // Both pipes are drained to the end so a chatty server never blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut shared) = sink.lock() {
                        shared.push_str(&line);
                        shared.push('\n');
                    }
                }
            });
        }
        let (line_tx, line_rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout is piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(CONSOLE_PREFIX) {
                    let _ = line_tx.send(line);
                }
            }
        });

        let mut server = Self {
            child,
            base_url: String::new(),
            stderr,
        };
        let line = match line_rx.recv_timeout(CONSOLE_LINE_DEADLINE) {
            Ok(line) => line,
            Err(err) => panic!(
                "no `{CONSOLE_PREFIX}` line on stdout ({err}); exit status {:?}; stderr:\n{}",
                server.child.try_wait(),
                server.stderr_text()
            ),
        };
        let url = line.trim_start_matches(CONSOLE_PREFIX).trim();
        let base = url
            .strip_suffix("/admin")
            .unwrap_or_else(|| panic!("the console URL does not end in /admin: {line}"));
        let port = base.strip_prefix("https://127.0.0.1:").unwrap_or_else(|| {
            panic!("the console URL is not https on the bound 127.0.0.1 address: {line}")
        });
        let port: u16 = port
            .parse()
            .unwrap_or_else(|_| panic!("no port in the console URL: {line}"));
        assert_ne!(
            port, 0,
            "the console line must name the real bound port: {line}"
        );
        server.base_url = base.to_string();
        server
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default()
    }

    /// GETs /healthz until it answers 200, a bounded number of times.
    async fn assert_healthy(&self) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a reqwest client");
        let url = format!("{}/healthz", self.base_url);
        let mut last = String::from("no request made");
        for _ in 0..HEALTH_TRIES {
            match client.get(&url).send().await {
                Ok(response) if response.status() == reqwest::StatusCode::OK => return,
                Ok(response) => last = format!("status {}", response.status()),
                Err(err) => last = format!("{err:?}"),
            }
            tokio::task::yield_now().await;
        }
        panic!(
            "{url} never answered 200 (last: {last}); server stderr:\n{}",
            self.stderr_text()
        );
    }

    /// Ends the server (SIGKILL, as a crash or power loss would) and reaps it.
    fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.end();
    }
}

#[tokio::test]
async fn install_serve_then_upgrade_in_place_keeps_config_and_takes_a_backup() {
    let temp = tempfile::tempdir().expect("a temporary folder");
    let layout = Layout::new(&temp.path().join("gatehouse"));

    let first = install_from_binary(&layout);
    assert_installed_layout(&layout);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains(&format!(
            "{} serve --config {}",
            layout.binary().display(),
            layout.config().display()
        )),
        "install.sh --no-systemd must print the command that starts it:\n{}",
        describe(&first)
    );
    // Stand in for an older version: the installed binary with one byte more (it still runs).
    let mut older = fs::read(layout.binary()).expect("the binary is readable");
    older.push(0);
    fs::write(layout.binary(), &older).expect("the older binary is written");
    // An administrator's edit, which an upgrade must keep.
    let mut config_before = fs::read(layout.config()).expect("the configuration is readable");
    config_before.extend_from_slice(b"\n# edited by the administrator\n");
    fs::write(layout.config(), &config_before).expect("the configuration is writable");

    let server = Server::start(&layout);
    server.assert_healthy().await;

    // While the server holds the data folder, an upgrade is refused and changes nothing.
    let refused = run_install(prefix_args(
        &layout,
        &["--binary".as_ref(), BINARY.as_ref()],
    ));
    assert!(
        !refused.status.success(),
        "install.sh upgraded under a running server:\n{}",
        describe(&refused)
    );
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refusal.contains("running server holds")
            && refusal.contains(&layout.data_dir().display().to_string()),
        "the refusal must say a running server holds the data folder:\n{}",
        describe(&refused)
    );
    assert!(
        layout.pre_upgrade_backups().is_empty(),
        "a refused upgrade must not take a backup"
    );
    server.assert_healthy().await;
    server.stop();

    // Stopped: the re-run upgrades in place.
    let upgrade = install_from_binary(&layout);
    assert_eq!(
        fs::read(layout.config()).expect("the configuration is readable"),
        config_before,
        "an upgrade must never rewrite the configuration:\n{}",
        describe(&upgrade)
    );
    let backups = layout.pre_upgrade_backups();
    assert_eq!(
        backups.len(),
        1,
        "one pre-upgrade backup expected, found {backups:?}:\n{}",
        describe(&upgrade)
    );
    let backup_size = fs::metadata(&backups[0])
        .expect("the backup is readable")
        .len();
    assert!(
        backup_size > 0,
        "the pre-upgrade backup {} is empty",
        backups[0].display()
    );
    assert_installed_layout(&layout);
    // The old binary is kept beside the new one, to go back with the pre-upgrade backup.
    let previous = layout.binary().with_extension("previous");
    assert_eq!(
        fs::read(&previous).expect("the previous binary is kept"),
        older,
        "{}",
        describe(&upgrade)
    );
    assert_ne!(fs::read(layout.binary()).expect("binary"), older);

    // The upgraded install starts again on the kept data folder.
    let again = Server::start(&layout);
    again.assert_healthy().await;
}

/// The entries of a folder, by name, sorted.
fn entries(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} is readable: {e}", dir.display()))
        .map(|entry| entry.expect("a readable entry").file_name())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn uninstall_removes_the_binary_keeps_config_and_data_and_waits_for_the_server_to_stop() {
    let temp = tempfile::tempdir().expect("a temporary folder");
    let layout = Layout::new(&temp.path().join("gatehouse"));
    install_from_binary(&layout);
    let config = fs::read(layout.config()).expect("the configuration is readable");
    let uninstall = || run_install(prefix_args(&layout, &["--uninstall".as_ref()]));

    // While the installed binary runs, nothing is removed, and the refusal names the process.
    let server = Server::start(&layout);
    server.assert_healthy().await;
    let data = entries(&layout.data_dir());
    assert!(
        data.iter().any(|name| name != "backups"),
        "the server wrote its data: {data:?}"
    );
    let refused = uninstall();
    assert!(
        !refused.status.success(),
        "uninstalled under a running server:\n{}",
        describe(&refused)
    );
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refusal.contains("still runs") && refusal.contains(&server.child.id().to_string()),
        "the refusal must name the running process:\n{}",
        describe(&refused)
    );
    assert!(
        layout.binary().exists(),
        "a refused uninstall removed the binary"
    );
    server.stop();

    // Stopped: the binary goes; the configuration and the data stay, and the command that
    // removes them is printed.
    let done = uninstall();
    assert!(done.status.success(), "{}", describe(&done));
    assert!(!layout.binary().exists(), "{}", describe(&done));
    assert_eq!(
        fs::read(layout.config()).expect("the configuration is kept"),
        config
    );
    assert_eq!(entries(&layout.data_dir()), data, "the data folder is kept");
    let conf_dir = layout
        .config()
        .parent()
        .expect("a folder")
        .display()
        .to_string();
    let printed = String::from_utf8_lossy(&done.stdout);
    assert!(
        printed.contains(&format!(
            "rm -rf -- {conf_dir} {}",
            layout.data_dir().display()
        )),
        "{}",
        describe(&done)
    );

    // Again: nothing left to remove is no error.
    let again = uninstall();
    assert!(again.status.success(), "{}", describe(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is not there"),
        "{}",
        describe(&again)
    );
    // A binary source or a setting with --uninstall is a mistake, said so.
    let mixed = run_install(prefix_args(
        &layout,
        &["--uninstall".as_ref(), "--binary".as_ref(), BINARY.as_ref()],
    ));
    assert!(!mixed.status.success(), "{}", describe(&mixed));
    assert!(
        String::from_utf8_lossy(&mixed.stderr).contains("--uninstall takes no binary source"),
        "{}",
        describe(&mixed)
    );

    // Installing again picks up the kept configuration and data.
    install_from_binary(&layout);
    assert_eq!(
        fs::read(layout.config()).expect("the configuration is readable"),
        config
    );
    let server = Server::start(&layout);
    server.assert_healthy().await;
}

#[test]
fn install_from_a_release_archive_url() {
    let temp = tempfile::tempdir().expect("a temporary folder");
    let release = temp.path().join("release");
    let folder = release.join("gatehouse-0.0.0-test");
    fs::create_dir_all(&folder).expect("a release folder");
    fs::copy(BINARY, folder.join("gatehouse"))
        .expect("the binary is copied into the release folder");
    let archive = temp.path().join("gatehouse-0.0.0-test.tar.gz");
    let tar = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&release)
        .arg("gatehouse-0.0.0-test")
        .output()
        .expect("tar runs");
    assert!(tar.status.success(), "tar failed:\n{}", describe(&tar));

    let layout = Layout::new(&temp.path().join("prefix"));
    let url = format!("file://{}", archive.display());
    let output = run_install(prefix_args(&layout, &["--archive".as_ref(), url.as_ref()]));
    assert!(
        output.status.success(),
        "install.sh --archive failed:\n{}",
        describe(&output)
    );
    assert_installed_layout(&layout);
    assert!(
        fs::read(layout.binary()).expect("the installed binary is readable")
            == fs::read(BINARY).expect("the built binary is readable"),
        "the installed binary is not the one from the archive"
    );
}

#[test]
fn piped_into_bash_without_a_source_asks_for_an_archive() {
    let temp = tempfile::tempdir().expect("a temporary folder");
    let layout = Layout::new(temp.path());
    let script = fs::File::open(install_script()).expect("install.sh is readable");
    // `curl … | bash -s -- ARGS`: there is no checkout to build, so --archive is required.
    let output = Command::new("bash")
        .args(["-s", "--", "--no-systemd", "--prefix"])
        .arg(&layout.prefix)
        .stdin(script)
        .output()
        .expect("bash runs");
    assert!(
        !output.status.success(),
        "install.sh succeeded with nothing to install:\n{}",
        describe(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--archive"),
        "the error must say to pass --archive:\n{}",
        describe(&output)
    );
    assert!(
        !layout.binary().exists(),
        "nothing may be installed without a binary"
    );
}

#[test]
fn installed_units_are_the_packaged_units() {
    for (args, file) in [
        (&["--print-unit"][..], "gatehouse.service"),
        (
            &["--print-unit", "--gateway"][..],
            "gatehouse-gateway.service",
        ),
    ] {
        let output = run_install(args);
        assert!(
            output.status.success(),
            "install.sh {args:?} failed:\n{}",
            describe(&output)
        );
        let packaged = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packaging")
            .join(file);
        let packaged = fs::read_to_string(packaged).expect("the packaged unit is readable");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            packaged,
            "install.sh {args:?} prints a unit that differs from packaging/{file}: edit both together"
        );
    }
}

/// The systemd path, on a real systemd: a Debian machine booted under systemd-nspawn
/// (`machine.rs`). The broker's service is installed, runs in its sandbox, stops cleanly, is set
/// up by the CLI as its user and upgraded in place (pre-upgrade backup);
/// its backup job writes where the sandbox allows. The standalone gateway's service forwards to
/// it, trusting the broker's certificate authority, and reloads without a restart. Uninstalling
/// both removes the services and the binary and keeps configuration, data and the user.
#[test]
fn on_systemd_the_services_run_sandboxed_upgrade_reload_and_uninstall() {
    const PASSWORD: &str = "Correct-Horse-Battery-9";
    let binary = Path::new(BINARY);
    let files = tempfile::tempdir().expect("tempdir");
    // The broker's own certificate, from a private authority the gateway is told to trust.
    let (ca, chain, key) = crate::openstack_fake::private_ca(&["127.0.0.1", "localhost"]);
    for (name, text) in [
        ("ca.pem", &ca),
        ("broker.pem", &chain),
        ("broker.key", &key),
    ] {
        fs::write(files.path().join(name), text).expect("write");
    }
    fs::write(files.path().join("admin-password"), format!("{PASSWORD}\n")).expect("write");
    fs::set_permissions(files.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let m = Machine::boot(&[
        (binary.parent().expect("a folder"), "/opt/gatehouse/bin"),
        (
            install_script().parent().expect("packaging"),
            "/opt/gatehouse/packaging",
        ),
        (files.path(), "/opt/gatehouse/files"),
    ]);
    let installer = |args: &str| {
        m.sh(&format!(
            "bash /opt/gatehouse/packaging/install.sh {args} 2>&1"
        ))
    };
    let install = |args: &str| installer(&format!("--binary /opt/gatehouse/bin/gatehouse {args}"));
    let as_service = |command: &str| {
        m.sh(&format!(
            "cd /var/lib/gatehouse && runuser -u gatehouse -- /usr/local/bin/gatehouse {command}"
        ))
    };

    // A fresh install: enabled, running, answering on 443, in its sandbox.
    let said = install("");
    assert!(said.contains("creating system user gatehouse"), "{said}");
    assert!(said.contains("is running"), "{said}");
    assert_eq!(m.sh("systemctl is-enabled gatehouse").trim(), "enabled");
    let packaged = fs::read_to_string(install_script().with_file_name("gatehouse.service"))
        .expect("the packaged unit");
    assert_eq!(m.sh("cat /etc/systemd/system/gatehouse.service"), packaged);
    assert_eq!(m.sh("curl -fsk https://127.0.0.1/healthz").trim(), "ok");
    assert_sandboxed(&m, "gatehouse");

    // SIGTERM from systemd ends it cleanly.
    m.sh("systemctl stop gatehouse");
    assert_stopped_cleanly(&m, "gatehouse");

    // The wizard by the CLI, as the service user, with the broker's own certificate; the
    // broker's key for the gateway.
    m.sh(
        "install -m 0400 -o gatehouse /opt/gatehouse/files/admin-password \
         /var/lib/gatehouse/admin-password",
    );
    as_service(
        "setup --config /etc/gatehouse/gatehouse.toml --data /var/lib/gatehouse \
         --admin-password-file /var/lib/gatehouse/admin-password \
         --tls-cert /opt/gatehouse/files/broker.pem --tls-key /opt/gatehouse/files/broker.key",
    );
    as_service("broker-key export --data /var/lib/gatehouse --out /var/lib/gatehouse/broker.pub");
    m.sh("rm /var/lib/gatehouse/admin-password; mv /var/lib/gatehouse/broker.pub /root/broker.pub");

    // An upgrade in place (the same binary again: keeping the previous one is tested above): a
    // backup with the old binary first, the service started again.
    let said = install("");
    assert!(said.contains("is running"), "{said}");
    let backups = m.sh("ls -l /var/lib/gatehouse/backups");
    assert!(
        backups.contains("pre-upgrade-") && backups.contains(" gatehouse gatehouse "),
        "{backups}"
    );
    // It now serves the certificate it was given: checked against its authority.
    assert_eq!(
        m.sh("curl -fs --cacert /opt/gatehouse/files/ca.pem https://127.0.0.1/healthz")
            .trim(),
        "ok"
    );

    // The scheduled backup writes into the data folder, the one place the sandbox lets it.
    let token = m.sh(&format!(
        "curl -fs --cacert /opt/gatehouse/files/ca.pem -H 'Content-Type: application/json' \
         -d '{{\"username\": \"admin\", \"password\": \"{PASSWORD}\"}}' \
         https://127.0.0.1/api/v1/tokens"
    ));
    let token: serde_json::Value = serde_json::from_str(&token).expect("a token answer");
    let token = token["token"].as_str().expect("a token").to_string();
    let api = |method: &str, port: u16, path: &str| {
        m.sh(&format!(
            "curl -fs -X {method} --cacert /opt/gatehouse/files/ca.pem -k \
             -H 'Authorization: Bearer {token}' https://127.0.0.1:{port}{path}"
        ))
    };
    let run: serde_json::Value =
        serde_json::from_str(&api("POST", 443, "/api/v1/jobs/backup/run?wait=true"))
            .expect("a run answer");
    assert_eq!(run["last_ok"], true, "{run}");
    let scheduled = m.sh("ls /var/lib/gatehouse/backups");
    assert_eq!(
        scheduled
            .lines()
            .filter(|f| !f.starts_with("pre-upgrade-"))
            .count(),
        1,
        "{scheduled}"
    );

    // The standalone gateway beside it: its own sandbox, forwarding API requests to the
    // broker (whose certificate it checks against the authority it was given).
    let said = install(
        "--gateway --broker https://127.0.0.1:443 --broker-key /root/broker.pub \
         --broker-ca /opt/gatehouse/files/ca.pem --listen 0.0.0.0:8444",
    );
    assert!(said.contains("is running"), "{said}");
    assert_sandboxed(&m, "gatehouse-gateway");
    let jobs: serde_json::Value =
        serde_json::from_str(&api("GET", 8444, "/api/v1/jobs")).expect("jobs through the gateway");
    assert!(
        jobs.as_array()
            .is_some_and(|jobs| jobs.iter().any(|j| j["name"] == "backup")),
        "{jobs}"
    );
    // A reload re-reads the certificate in the same process.
    let before = main_pid(&m, "gatehouse-gateway");
    m.sh("systemctl reload gatehouse-gateway");
    assert_eq!(
        m.sh("systemctl is-active gatehouse-gateway").trim(),
        "active"
    );
    assert_eq!(main_pid(&m, "gatehouse-gateway"), before);
    m.sh("systemctl stop gatehouse-gateway");
    assert_stopped_cleanly(&m, "gatehouse-gateway");

    // Uninstalling: the gateway's service goes and the binary stays for the broker's; then
    // the broker's, and the binary with it. Configuration, data and the user stay.
    installer("--gateway --uninstall");
    assert!(!m.run("systemctl cat gatehouse-gateway").status.success());
    assert!(m.sh("ls /usr/local/bin").contains("gatehouse"));
    installer("--uninstall");
    assert!(!m.run("systemctl cat gatehouse").status.success());
    assert_eq!(m.sh("ls /usr/local/bin").trim(), "");
    let kept =
        m.sh("ls /etc/gatehouse /var/lib/gatehouse /var/lib/gatehouse/backups; id -u gatehouse");
    for file in ["gatehouse.toml", "gateway.env", "pre-upgrade-", "CURRENT"] {
        assert!(kept.contains(file), "{file} is kept:\n{kept}");
    }
}

fn main_pid(m: &Machine, service: &str) -> String {
    let pid = m.sh(&format!("systemctl show -p MainPID --value {service}"));
    let pid = pid.trim().to_string();
    assert_ne!(pid, "0", "{service} has a main process");
    pid
}

/// The service runs as the `gatehouse` user, with no privilege but binding low ports, no way
/// to gain any, a system-call filter, and a read-only view of the system.
fn assert_sandboxed(m: &Machine, service: &str) {
    let pid = main_pid(m, service);
    let status = m.sh(&format!("cat /proc/{pid}/status"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
    };
    let uid = m.sh("id -u gatehouse");
    assert!(
        field("Uid:").iter().all(|u| *u == uid.trim()),
        "{service} runs as gatehouse:\n{status}"
    );
    // CAP_NET_BIND_SERVICE is capability 10.
    for caps in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(caps), ["0000000000000400"], "{service} {caps}");
    }
    assert_eq!(field("NoNewPrivs:"), ["1"], "{service}");
    assert_eq!(
        field("Seccomp:"),
        ["2"],
        "{service} runs under a system-call filter"
    );
    let write = m.run(&format!(
        "nsenter --target {pid} --mount touch /usr/local/bin/probe"
    ));
    assert!(
        !write.status.success()
            && String::from_utf8_lossy(&write.stderr).contains("Read-only file system"),
        "{service} sees the system read-only: {}",
        describe(&write)
    );
}

fn assert_stopped_cleanly(m: &Machine, service: &str) {
    let show = m.sh(&format!(
        "systemctl show -p ActiveState -p Result -p ExecMainStatus {service}"
    ));
    for line in ["ActiveState=inactive", "Result=success", "ExecMainStatus=0"] {
        assert!(
            show.lines().any(|l| l == line),
            "{service}: {line}?\n{show}"
        );
    }
}
