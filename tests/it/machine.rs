//! A throwaway Debian machine with systemd as its init, for the tests of what only a real
//! systemd shows (the installer's service, its sandbox, start, stop, reload, upgrade).
//!
//! - The root file system is made once with Debian's `debootstrap` (the host's release, the
//!   `minbase` variant plus systemd, D-Bus and curl) and kept under `CARGO_TARGET_TMPDIR`, so
//!   later runs on the same machine reuse it; a fresh CI machine makes it in a few minutes.
//! - Each [`Machine`] boots its own copy with `systemd-nspawn -b` on a private network (only its
//!   own loopback: the services' ports never meet the host's), with host files bound read-only
//!   where the test asks. The boot is awaited through nspawn's readiness notification, which
//!   also names the machine's init process; commands run inside with `nsenter`.
//! - Dropping it stops the machine (SIGTERM: systemd shuts down cleanly) and removes its copy.
//!
//! Needs root, `systemd-nspawn` (package systemd-container), `debootstrap` and `nsenter`
//! (util-linux); `tests/run.sh` installs them.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Only a guard against a machine that never comes up; a boot takes about a second.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);
/// The same for shutting it down.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

/// The host's Debian release, which the machine runs too.
fn codename() -> String {
    let os = std::fs::read_to_string("/etc/os-release").expect("/etc/os-release");
    os.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .expect("/etc/os-release names the Debian release (VERSION_CODENAME)")
}

/// The machine's root file system, made once per build folder.
fn root_image() -> PathBuf {
    static MADE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = made.as_ref() {
        return path.clone();
    }
    let release = codename();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("machine-{release}"));
    let done = path.join(".gatehouse-complete");
    if !done.exists() {
        let partial = path.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        let _ = std::fs::remove_dir_all(&path);
        let out = Command::new("debootstrap")
            .args([
                "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus,curl,ca-certificates",
                &release,
            ])
            .arg(&partial)
            .arg("http://deb.debian.org/debian")
            .output()
            .expect("debootstrap runs (package debootstrap; tests/run.sh installs it)");
        assert!(
            out.status.success(),
            "debootstrap {release} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(partial.join(".gatehouse-complete"), "").expect("mark the image");
        std::fs::rename(&partial, &path).expect("the image takes its place");
    }
    *made = Some(path.clone());
    path
}

/// A booted machine. Dropping it shuts it down.
pub struct Machine {
    dir: tempfile::TempDir,
    nspawn: Option<Child>,
    /// The machine's init (systemd), as the host sees it: what `nsenter` enters.
    leader: u32,
}

impl Machine {
    /// Boots a fresh copy of the image with each `(host path, machine path)` bound read-only.
    pub fn boot(binds: &[(&Path, &str)]) -> Machine {
        let image = root_image();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&image)
            .arg(&root)
            .status()
            .expect("cp");
        assert!(copied.success(), "copying the machine image failed");
        for (_, inside) in binds {
            std::fs::create_dir_all(root.join(inside.trim_start_matches('/')))
                .expect("a mount point in the machine");
        }
        let notify_path = dir.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
        notify
            .set_read_timeout(Some(BOOT_DEADLINE))
            .expect("timeout");
        let log = std::fs::File::create(dir.path().join("nspawn.log")).expect("log file");
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args([
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=passive",
            "--notify-ready=yes",
            "--boot",
        ])
        .arg("--directory")
        .arg(&root);
        for (host, inside) in binds {
            cmd.arg(format!("--bind-ro={}:{inside}", host.display()));
        }
        let nspawn = cmd
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn runs (package systemd-container; tests/run.sh installs it)");
        let mut machine = Machine {
            dir,
            nspawn: Some(nspawn),
            leader: 0,
        };
        // nspawn names the machine's init first, then says READY=1 once systemd is up.
        let mut buf = [0u8; 4096];
        loop {
            let n = notify.recv(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "the machine did not come up ({e}); nspawn said:\n{}",
                    machine.nspawn_log()
                )
            });
            let message = String::from_utf8_lossy(&buf[..n]);
            for line in message.lines() {
                if let Some(pid) = line.strip_prefix("X_NSPAWN_LEADER_PID=") {
                    machine.leader = pid.parse().expect("a process id");
                }
            }
            if message.lines().any(|l| l == "READY=1") {
                break;
            }
        }
        assert_ne!(machine.leader, 0, "nspawn named no init process");
        let state = machine.run("systemctl is-system-running --wait");
        let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
        assert!(
            state == "running" || state == "degraded",
            "the machine's systemd is {state}:\n{}",
            machine.sh("systemctl --failed --no-pager")
        );
        machine
    }

    fn nspawn_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nspawn.log")).unwrap_or_default()
    }

    /// Runs `script` with bash inside the machine, as root; whatever it ends with.
    pub fn run(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.leader.to_string(), "--all", "--"])
            .args(["/bin/bash", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter runs")
    }

    /// Runs `script` and returns what it printed; it must succeed.
    pub fn sh(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "in the machine, `{script}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let Some(mut nspawn) = self.nspawn.take() else {
            return;
        };
        // SIGTERM asks the machine's systemd to shut down, and nspawn ends with it; a machine
        // that does not is killed.
        let pid = nspawn.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let (ended, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = ended.send(nspawn.wait());
        });
        if wait.recv_timeout(SHUTDOWN_DEADLINE).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            let _ = wait.recv();
        }
    }
}
