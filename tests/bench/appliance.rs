//! The appliance's performance figures against the bars of the issue: release binary size,
//! start to first HTTPS answer on a warm store, idle memory after the wizard, and CLI backup
//! export/import of a 100,000-record store.
//!
//! Run with `cargo bench --bench appliance` (release build). It drives the real `gatehouse`
//! binary through `std::process` and builds the large store through the library. It prints
//! each figure next to its bar and whether it is met, then a Markdown summary table; it asserts
//! nothing about time, because the machines it runs on are shared and noisy. It exits non-zero
//! only when something does not work (a server that does not start, an import that loses
//! records), never because a bar is missed.
//!
//! Owns nothing but the temporary folders and the processes it starts (stopped with SIGTERM,
//! or SIGKILL on `Drop`); it writes nothing into the repository.

#[path = "shared.rs"]
mod shared;
use shared::{Server, available_cpus, gatehouse, ms, path_str};

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gatehouse::backup::Record;
use gatehouse::store::Store;

const BINARY: &str = env!("CARGO_BIN_EXE_gatehouse");
const ADMIN_PASSWORD: &str = "Bench-Console-Pass-47";
const BACKUP_PASSPHRASE: &str = "bench backup passphrase";
/// Timed starts of the server (after one warm-up start).
const START_RUNS: usize = 10;
/// Timed runs of each backup command; the median is reported.
const BACKUP_RUNS: usize = 3;
const BACKUP_RECORDS: usize = 100_000;
/// Bytes of each record's value.
const RECORD_VALUE_LEN: usize = 200;
const BENCH_TREES: [&str; 4] = [
    "bench_desktop_by_id",
    "bench_session_by_id",
    "bench_user_by_name",
    "bench_pool_by_id",
];
/// How long the server is left alone after the console walk before its memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);

const MB: f64 = 1_000_000.0;
const MIB: f64 = 1_048_576.0;

// The bars of the issue. "MB" is read as 10^6 bytes: the stricter reading of the two.
const BAR_BINARY_BYTES: u64 = 40_000_000;
const BAR_START: Duration = Duration::from_millis(300);
const BAR_IDLE_RSS_BYTES: u64 = 30_000_000;
const BAR_BACKUP: Duration = Duration::from_secs(2);

/// One line of the summary table.
struct Figure {
    name: String,
    measured: String,
    bar: String,
    met: bool,
}

impl Figure {
    fn print(&self) {
        println!(
            "  => {}: {} (bar: {}) {}",
            self.name,
            self.measured,
            self.bar,
            if self.met { "MET" } else { "NOT MET" }
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; there are no options to read.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run() {
        Ok(figures) => print_summary(&figures),
        Err(e) => {
            eprintln!("appliance bench failed: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<Vec<Figure>> {
    let tmp = tempfile::tempdir().context("temporary folder")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    println!("gatehouse binary: {BINARY}");
    println!("machine: {} CPUs available", available_cpus());
    println!();

    let mut figures = vec![binary_size()?];

    let data = tmp.path().join("data");
    let password_file = tmp.path().join("admin-password");
    std::fs::write(&password_file, format!("{ADMIN_PASSWORD}\n")).context("password file")?;
    let out = gatehouse(
        BINARY,
        &[
            "setup",
            "--data",
            path_str(&data)?,
            "--admin-password-file",
            path_str(&password_file)?,
        ],
    )?;
    println!("setup: {}", out.lines().last().unwrap_or_default());
    println!();

    figures.push(start_to_first_answer(&rt, &data, tmp.path())?);
    figures.extend(idle_memory(&rt, &data, tmp.path())?);
    figures.extend(backup_figures(tmp.path())?);
    Ok(figures)
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
        println!(
            "| {} | {} | {} | {} |",
            f.name,
            f.measured,
            f.bar,
            if f.met { "yes" } else { "**no**" }
        );
    }
}

// ---------------------------------------------------------------- 1. binary size

fn binary_size() -> Result<Figure> {
    println!("# 1. Release binary size");
    let bytes = std::fs::metadata(BINARY)
        .with_context(|| format!("size of {BINARY}"))?
        .len();
    let f = Figure {
        name: "release binary size".into(),
        measured: format!(
            "{:.1} MB ({:.1} MiB, {bytes} bytes)",
            bytes as f64 / MB,
            bytes as f64 / MIB
        ),
        bar: "< 40 MB".into(),
        met: bytes < BAR_BINARY_BYTES,
    };
    f.print();
    println!();
    Ok(f)
}

// ---------------------------------------------------------------- 2. start to first answer

fn start_to_first_answer(rt: &tokio::runtime::Runtime, data: &Path, tmp: &Path) -> Result<Figure> {
    println!("# 2. Start to first HTTPS answer (GET /healthz), warm store");
    // One start to warm the page cache and let the first start's one-time work happen.
    let warm = Server::start_with(BINARY, data, tmp, "warm-up", None)?;
    rt.block_on(healthz(&client()?, &warm.base))?;
    let stop = warm.stop()?;
    println!("  warm-up start done (stopped in {:.1} ms)", ms(stop));

    let mut firsts = Vec::with_capacity(START_RUNS);
    for i in 1..=START_RUNS {
        let client = client()?;
        let started = Instant::now();
        let server = Server::start_with(BINARY, data, tmp, &format!("start-{i}"), None)?;
        let console_line = started.elapsed();
        rt.block_on(healthz(&client, &server.base))?;
        let first = started.elapsed();
        drop(client);
        let stop = server.stop()?;
        println!(
            "  run {i:2}: console line {:6.1} ms, first answer {:6.1} ms, stop {:6.1} ms",
            ms(console_line),
            ms(first),
            ms(stop)
        );
        firsts.push(first);
    }
    let (median, min, max) = median_min_max(&mut firsts);
    let f = Figure {
        name: format!("start to first HTTPS answer, warm store (median of {START_RUNS})"),
        measured: format!(
            "{:.0} ms (min {:.0}, max {:.0})",
            ms(median),
            ms(min),
            ms(max)
        ),
        bar: "< 300 ms".into(),
        met: median < BAR_START,
    };
    f.print();
    println!();
    Ok(f)
}

async fn healthz(client: &reqwest::Client, base: &str) -> Result<()> {
    let resp = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .context("GET /healthz")?;
    let status = resp.status().as_u16();
    let body = resp.text().await.context("GET /healthz body")?;
    ensure!(
        status == 200 && body.trim() == "ok",
        "GET /healthz answered {status}: {body}"
    );
    Ok(())
}

// ---------------------------------------------------------------- 3. idle memory

fn idle_memory(rt: &tokio::runtime::Runtime, data: &Path, tmp: &Path) -> Result<Vec<Figure>> {
    println!("# 3. Idle memory after the wizard (signed in, console pages walked)");
    let server = Server::start_with(BINARY, data, tmp, "memory", None)?;
    let pid = server.pid();
    let base = server.base.clone();
    print_stage(pid, "just started")?;
    let walked = rt.block_on(async {
        let client = client()?;
        let login = get_ok(&client, &base, "/admin/login").await?;
        print_stage(pid, "after GET /admin/login")?;
        let csrf = csrf_of(&login).context("no CSRF token on /admin/login")?;
        let resp = client
            .post(format!("{base}/admin/login"))
            .form(&[
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
                ("csrf", csrf.as_str()),
            ])
            .send()
            .await
            .context("POST /admin/login")?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        ensure!(
            status == 303 && location == "/admin",
            "sign-in answered {status} to {location:?}"
        );
        print_stage(pid, "after POST /admin/login (password check)")?;
        for page in ["/admin", "/admin/system/licence", "/admin/system/audit"] {
            let body = get_ok(&client, &base, page).await?;
            println!("  GET {page}: 200, {} bytes", body.len());
        }
        print_stage(pid, "after the console pages")?;
        drop(client);
        tokio::time::sleep(IDLE_SETTLE).await;
        Ok::<_, anyhow::Error>(())
    });
    walked?;
    print_stage(pid, "idle, 2 s later")?;
    let status = proc_status(pid)?;
    let rss = status_kib(&status, "VmRSS")? * 1024;
    let hwm = status_kib(&status, "VmHWM")? * 1024;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    let metrics_rss = rt.block_on(async {
        let body = get_ok(&client()?, &base, "/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix("gatehouse_process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .context("no gatehouse_process_resident_memory_bytes in /metrics")
    })?;
    let stop = server.stop()?;
    println!(
        "  /proc/{pid}/status: VmRSS {:.1} MiB, VmHWM (peak) {:.1} MiB, {threads} threads",
        rss as f64 / MIB,
        hwm as f64 / MIB
    );
    println!(
        "  /metrics gatehouse_process_resident_memory_bytes: {:.1} MiB",
        metrics_rss / MIB
    );
    println!("  stopped in {:.1} ms", ms(stop));
    let figures = vec![
        Figure {
            name: "idle memory after the wizard (VmRSS)".into(),
            measured: format!(
                "{:.1} MiB ({:.1} MB; peak {:.1} MiB)",
                rss as f64 / MIB,
                rss as f64 / MB,
                hwm as f64 / MIB
            ),
            bar: "< 30 MB".into(),
            met: rss < BAR_IDLE_RSS_BYTES,
        },
        Figure {
            name: "idle memory after the wizard (/metrics)".into(),
            measured: format!("{:.1} MiB ({:.1} MB)", metrics_rss / MIB, metrics_rss / MB),
            bar: "< 30 MB".into(),
            met: metrics_rss < BAR_IDLE_RSS_BYTES as f64,
        },
    ];
    for f in &figures {
        f.print();
    }
    println!();
    Ok(figures)
}

async fn get_ok(client: &reqwest::Client, base: &str, path: &str) -> Result<String> {
    let resp = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .with_context(|| format!("GET {path}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .with_context(|| format!("GET {path} body"))?;
    ensure!(status == 200, "GET {path} answered {status}");
    Ok(body)
}

/// The value of the first `name="csrf"` field in a page.
fn csrf_of(html: &str) -> Option<String> {
    let marker = "name=\"csrf\" value=\"";
    let at = html.find(marker)? + marker.len();
    Some(html[at..].split('"').next()?.to_string())
}

fn proc_status(pid: u32) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))
}

/// A `Name:   1234 kB` field of /proc/PID/status, in KiB.
fn status_kib(status: &str, field: &str) -> Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc status"))
}

/// Prints the process's resident memory split into anonymous (heap, stacks) and file-backed
/// (the mapped binary) pages.
fn print_stage(pid: u32, stage: &str) -> Result<()> {
    let status = proc_status(pid)?;
    let mib = |field| status_kib(&status, field).map(|kib| kib as f64 / 1024.0);
    println!(
        "  {stage:<42} VmRSS {:5.1} MiB = anonymous {:5.1} + file-backed {:5.1}",
        mib("VmRSS")?,
        mib("RssAnon")?,
        mib("RssFile")?
    );
    Ok(())
}

// ---------------------------------------------------------------- 4. backups

fn backup_figures(tmp: &Path) -> Result<Vec<Figure>> {
    println!("# 4. Backup export and import of a {BACKUP_RECORDS}-record store (CLI)");
    let source = tmp.join("backup-source");
    let records = bench_records();
    let built = Instant::now();
    {
        let store = Store::open(&source).context("open the source store")?;
        store
            .replace_all(&records)
            .context("fill the source store")?;
    }
    println!(
        "  built the store: {BACKUP_RECORDS} records of {RECORD_VALUE_LEN} bytes in {} trees ({:.1} s), {:.1} MB on disk",
        BENCH_TREES.len(),
        built.elapsed().as_secs_f64(),
        dir_size(&source) as f64 / MB
    );
    let passphrase_file = tmp.join("passphrase");
    std::fs::write(&passphrase_file, format!("{BACKUP_PASSPHRASE}\n"))
        .context("passphrase file")?;

    let plain = tmp.join("bench-plain.ghbak");
    let encrypted = tmp.join("bench-encrypted.ghbak");
    let export_plain = time_runs("export", || {
        gatehouse(
            BINARY,
            &[
                "backup",
                "export",
                "--data",
                path_str(&source)?,
                "--out",
                path_str(&plain)?,
            ],
        )
    })?;
    let export_encrypted = time_runs("export --passphrase-file", || {
        gatehouse(
            BINARY,
            &[
                "backup",
                "export",
                "--data",
                path_str(&source)?,
                "--out",
                path_str(&encrypted)?,
                "--passphrase-file",
                path_str(&passphrase_file)?,
            ],
        )
    })?;
    let plain_size = std::fs::metadata(&plain)
        .context("plain backup file")?
        .len();
    let encrypted_size = std::fs::metadata(&encrypted)
        .context("encrypted backup file")?
        .len();
    println!(
        "  backup files: {:.1} MB plain, {:.1} MB encrypted",
        plain_size as f64 / MB,
        encrypted_size as f64 / MB
    );

    let mut n = 0;
    let import_plain = time_runs("import", || {
        n += 1;
        let target = tmp.join(format!("import-plain-{n}"));
        let out = gatehouse(
            BINARY,
            &[
                "backup",
                "import",
                "--data",
                path_str(&target)?,
                "--in",
                path_str(&plain)?,
            ],
        )?;
        check_import(&target, &records)?;
        Ok(out)
    })?;
    let mut n = 0;
    let import_encrypted = time_runs("import --passphrase-file", || {
        n += 1;
        let target = tmp.join(format!("import-encrypted-{n}"));
        let out = gatehouse(
            BINARY,
            &[
                "backup",
                "import",
                "--data",
                path_str(&target)?,
                "--in",
                path_str(&encrypted)?,
                "--passphrase-file",
                path_str(&passphrase_file)?,
            ],
        )?;
        check_import(&target, &records)?;
        Ok(out)
    })?;
    println!("  every import verified: the {BACKUP_RECORDS} bench records read back byte for byte");

    let figure = |name: &str, t: Duration, size: Option<u64>| Figure {
        name: format!("{name} (median of {BACKUP_RUNS})"),
        measured: match size {
            Some(s) => format!("{:.2} s (file {:.1} MB)", t.as_secs_f64(), s as f64 / MB),
            None => format!("{:.2} s", t.as_secs_f64()),
        },
        bar: "< 2 s".into(),
        met: t < BAR_BACKUP,
    };
    let figures = vec![
        figure(
            "backup export, 100k records",
            export_plain,
            Some(plain_size),
        ),
        figure("backup import, 100k records", import_plain, None),
        figure(
            "backup export, 100k records, encrypted",
            export_encrypted,
            Some(encrypted_size),
        ),
        figure(
            "backup import, 100k records, encrypted",
            import_encrypted,
            None,
        ),
    ];
    for f in &figures {
        f.print();
    }
    println!();
    Ok(figures)
}

/// 100,000 records spread over [`BENCH_TREES`], each value `RECORD_VALUE_LEN` bytes of
/// JSON-looking text (the store does not decode values on export or import).
fn bench_records() -> Vec<Record> {
    (0..BACKUP_RECORDS)
        .map(|i| {
            let tree = BENCH_TREES[i % BENCH_TREES.len()];
            let mut value = format!(
                "{{\"id\":\"{i:08}\",\"name\":\"desktop-{i}\",\"pool\":\"pool-{}\",\"note\":\"",
                i % 97
            )
            .into_bytes();
            let mut fill = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while value.len() < RECORD_VALUE_LEN - 2 {
                fill = fill.rotate_left(7) ^ 0x5DEE_CE66;
                value.push(b'a' + (fill % 26) as u8);
            }
            value.extend_from_slice(b"\"}");
            Record {
                tree: tree.to_string(),
                key: format!("{i:08}").into_bytes(),
                value,
            }
        })
        .collect()
}

/// Opens an imported data folder with the library and checks that every bench record came
/// back unchanged, and no other bench record appeared.
fn check_import(data: &Path, expected: &[Record]) -> Result<()> {
    let store = Store::open(data).with_context(|| format!("open {}", data.display()))?;
    let got: BTreeMap<(String, Vec<u8>), Vec<u8>> = store
        .export_records()
        .context("read the imported store")?
        .into_iter()
        .filter(|r| r.tree.starts_with("bench_"))
        .map(|r| ((r.tree, r.key), r.value))
        .collect();
    ensure!(
        got.len() == expected.len(),
        "{} holds {} bench records, not {}",
        data.display(),
        got.len(),
        expected.len()
    );
    for r in expected {
        match got.get(&(r.tree.clone(), r.key.clone())) {
            Some(v) if *v == r.value => {}
            _ => bail!(
                "{} / {} differs after the import",
                r.tree,
                String::from_utf8_lossy(&r.key)
            ),
        }
    }
    Ok(())
}

/// Runs `f` [`BACKUP_RUNS`] times, printing each time and its output; returns the median.
fn time_runs(label: &str, mut f: impl FnMut() -> Result<String>) -> Result<Duration> {
    let mut times = Vec::with_capacity(BACKUP_RUNS);
    for i in 1..=BACKUP_RUNS {
        let started = Instant::now();
        let out = f()?;
        let t = started.elapsed();
        println!(
            "  {label} run {i}: {:.2} s  ({})",
            t.as_secs_f64(),
            out.trim()
        );
        times.push(t);
    }
    Ok(median_min_max(&mut times).0)
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

// ---------------------------------------------------------------- the server and the CLI

/// An HTTPS client with a cookie jar that accepts the appliance's self-signed certificate
/// and does not follow redirects.
fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .cookie_store(true)
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("HTTPS client")
}

/// Sorts `times` and returns (median, min, max); the median of an even count is the mean of
/// the two middle values.
fn median_min_max(times: &mut [Duration]) -> (Duration, Duration, Duration) {
    times.sort();
    let n = times.len();
    match (times.first(), times.last()) {
        (Some(&min), Some(&max)) => {
            let median = if n % 2 == 1 {
                times[n / 2]
            } else {
                (times[n / 2 - 1] + times[n / 2]) / 2
            };
            (median, min, max)
        }
        _ => (Duration::ZERO, Duration::ZERO, Duration::ZERO),
    }
}
