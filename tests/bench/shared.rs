//! What the benchmarks share: a running `gatehouse serve` and the CLI, driven as processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

pub const CONSOLE_PREFIX: &str = "Gatehouse console: ";
/// A guard against a hung server only: a healthy one prints its console line at once.
pub const CONSOLE_LINE_DEADLINE: Duration = Duration::from_secs(120);

/// A running `gatehouse serve`; SIGKILLed on `Drop` unless [`Server::stop`] ran.
pub struct Server {
    pub child: Option<Child>,
    pub base: String,
    pub stderr: PathBuf,
}

impl Server {
    /// Spawns `gatehouse serve --data DATA --listen 127.0.0.1:0` and returns once it printed
    /// its console line. Its stderr goes to `TMP/LABEL.stderr.log`.
    /// `config`: a `--config FILE` for `serve`, or none (the built-in defaults).
    pub fn start_with(
        binary: &str,
        data: &Path,
        tmp: &Path,
        label: &str,
        config: Option<&Path>,
    ) -> Result<Self> {
        let stderr = tmp.join(format!("{label}.stderr.log"));
        let mut command = Command::new(binary);
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).context("stderr log")?)
            .spawn()
            .context("spawn gatehouse serve")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut server = Self {
            child: Some(child),
            base: String::new(),
            stderr,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keeps reading to the end so the server never writes into a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(CONSOLE_PREFIX) {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        match rx.recv_timeout(CONSOLE_LINE_DEADLINE) {
            Ok(url) => {
                server.base = url.trim_end_matches("/admin").to_string();
                Ok(server)
            }
            Err(_) => bail!(
                "the server did not print its console line: {}",
                std::fs::read_to_string(&server.stderr).unwrap_or_default()
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then waits for the exit; returns how long the shutdown took.
    pub fn stop(mut self) -> Result<Duration> {
        let Some(mut child) = self.child.take() else {
            bail!("the server was already stopped");
        };
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("run kill -TERM")?;
        if !sent.success() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("kill -TERM {} failed", child.id());
        }
        let status = child.wait().context("wait for the server")?;
        let took = started.elapsed();
        ensure!(
            status.success(),
            "the server exited with {status} after SIGTERM: {}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
        Ok(took)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a `gatehouse` command to completion; its stdout, or an error with its stderr.
pub fn gatehouse(binary: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("run gatehouse {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "gatehouse {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
