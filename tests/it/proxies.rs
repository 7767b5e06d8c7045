//! The real proxies the tests put in front of gateways, with the configurations
//! `docs/gateway.md` gives: nginx as an HTTP reverse proxy and, with its stream module, as a
//! TCP balancer sending the PROXY protocol v1; Apache 2.4 (mod_proxy_http, mod_proxy_wstunnel)
//! as an HTTP reverse proxy; HAProxy as a TCP balancer sending the PROXY protocol v2, with
//! health checks and a stats socket. Each runs in the foreground from a configuration in its
//! own temporary folder, listens on a free loopback port, and is killed on drop.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::gateway::free_port;

/// A proxy the tests started; killed on drop.
pub(crate) struct Proxy {
    child: Child,
    /// Where it accepts clients.
    pub(crate) addr: SocketAddr,
    /// Its configuration, logs and sockets.
    pub(crate) dir: tempfile::TempDir,
    /// The file in `dir` it writes its errors to, besides its standard output and error.
    log: Option<&'static str>,
}

impl Proxy {
    /// Runs the installed `program` (the first of `paths` that exists) with `args` in the
    /// foreground, its standard output and error into `dir/output.log`, and waits until it
    /// accepts on `addr`: a bounded number of tries; if it exits or never listens, panics with
    /// what it logged (`log` names a file in `dir` where it writes its errors).
    async fn start(
        package: &str,
        paths: &[&str],
        args: &[&OsStr],
        addr: SocketAddr,
        dir: tempfile::TempDir,
        log: Option<&'static str>,
    ) -> Proxy {
        let program = paths
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!(
                    "{package} is installed (Debian package `{package}`; tests/run.sh installs it)"
                )
            });
        let output = std::fs::File::create(dir.path().join("output.log")).expect("output file");
        let child = Command::new(&program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("output file"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", program.display()));
        let mut daemon = Proxy {
            child,
            addr,
            dir,
            log,
        };
        for _ in 0..600 {
            if TcpStream::connect(addr).await.is_ok() {
                return daemon;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("{package} exited ({status}): {}", daemon.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{package} did not listen on {addr}: {}", daemon.log());
    }

    /// What it logged: its error log, then its standard output and error.
    pub(crate) fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        let errors = self.log.and_then(|name| read(name).ok());
        format!(
            "{}{}",
            errors.unwrap_or_default(),
            read("output.log").unwrap_or_default()
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new temporary folder and a free loopback address.
fn folder_and_address() -> (tempfile::TempDir, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    (dir, SocketAddr::from(([127, 0, 0, 1], free_port())))
}

/// Writes `text` into `dir/name`; its path.
fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {name}: {e}"));
    path
}

// ---- nginx ------------------------------------------------------------------------------------

/// nginx with the configuration `body(addr, folder)` gives after the common head (one process,
/// its files under the folder), with Debian's dynamic `modules` loaded (`ngx_stream_module`).
pub(crate) async fn nginx(
    modules: &[&str],
    body: impl FnOnce(SocketAddr, &str) -> String,
) -> Proxy {
    let (dir, addr) = folder_and_address();
    let p = dir.path().display().to_string();
    std::fs::create_dir_all(dir.path().join("tmp")).expect("mkdir");
    let load: String = modules
        .iter()
        .map(|m| format!("load_module /usr/lib/nginx/modules/{m}.so;\n"))
        .collect();
    let conf = format!(
        "{load}daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
         events {{ worker_connections 512; }}\n{}",
        body(addr, &p)
    );
    let conf = write_config(dir.path(), "nginx.conf", &conf);
    let prefix = dir.path().to_path_buf();
    let error_log = prefix.join("error.log");
    let args: [&OsStr; 6] = [
        "-p".as_ref(),
        prefix.as_os_str(),
        "-c".as_ref(),
        conf.as_os_str(),
        "-e".as_ref(),
        error_log.as_os_str(),
    ];
    let paths = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"];
    Proxy::start("nginx", &paths, &args, addr, dir, Some("error.log")).await
}

/// nginx as docs/gateway.md's reverse proxy in front of `upstream` (a gateway's plain port).
pub(crate) async fn nginx_reverse_proxy(upstream: SocketAddr) -> Proxy {
    nginx(&[], |addr, p| {
        format!(
            "http {{\n\
               access_log {p}/access.log;\n\
               client_body_temp_path {p}/tmp/body;\n proxy_temp_path {p}/tmp/proxy;\n\
               fastcgi_temp_path {p}/tmp/fastcgi;\n uwsgi_temp_path {p}/tmp/uwsgi;\n\
               scgi_temp_path {p}/tmp/scgi;\n\
               server {{\n\
                 listen {addr};\n\
                 location / {{\n\
                   proxy_pass http://{upstream};\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Upgrade $http_upgrade;\n\
                   proxy_set_header Connection \"upgrade\";\n\
                   proxy_set_header Host $host;\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                   proxy_read_timeout 600s;\n\
                   proxy_send_timeout 600s;\n\
                   proxy_buffering off;\n\
                 }}\n\
               }}\n\
             }}\n"
        )
    })
    .await
}

/// docs/gateway.md's nginx stream configuration in front of `gateways`: sticky by source
/// address, the PROXY protocol v1 to the gateways.
pub(crate) async fn nginx_stream(gateways: &[SocketAddr]) -> Proxy {
    let servers: String = gateways
        .iter()
        .map(|gw| format!("        server {gw};\n"))
        .collect();
    nginx(&["ngx_stream_module"], |addr, _| {
        format!(
            "stream {{\n\
             \x20   upstream gatehouse_gateways {{\n\
             \x20       hash $remote_addr consistent;\n{servers}\
             \x20   }}\n\
             \x20   server {{\n\
             \x20       listen {addr};\n\
             \x20       proxy_pass gatehouse_gateways;\n\
             \x20       proxy_protocol on;\n\
             \x20   }}\n\
             }}\n"
        )
    })
    .await
}

// ---- Apache -----------------------------------------------------------------------------------

/// Apache 2.4 with docs/gateway.md's `ProxyPass` lines in front of `upstream` (a gateway's
/// plain port): one process (`-X`), only the modules they need.
pub(crate) async fn apache_reverse_proxy(upstream: SocketAddr) -> Proxy {
    let (dir, addr) = folder_and_address();
    let p = dir.path().display().to_string();
    let modules: String = [
        ("mpm_event", "mpm_event"),
        ("authz_core", "authz_core"),
        ("proxy", "proxy"),
        ("proxy_http", "proxy_http"),
        ("proxy_wstunnel", "proxy_wstunnel"),
    ]
    .iter()
    .map(|(name, file)| {
        format!("LoadModule {name}_module /usr/lib/apache2/modules/mod_{file}.so\n")
    })
    .collect();
    // As root, Apache wants an unprivileged user to serve as (the package makes www-data).
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let user = if root {
        "User www-data\nGroup www-data\n"
    } else {
        ""
    };
    let conf = format!(
        "{modules}{user}ServerName localhost\nListen {addr}\n\
         PidFile {p}/httpd.pid\nDefaultRuntimeDir {p}\nMutex file:{p} default\n\
         ErrorLog {p}/error.log\nLogLevel info\n\
         ProxyPass        /tunnel ws://{upstream}/tunnel\n\
         ProxyPass        /       http://{upstream}/\n\
         ProxyPassReverse /       http://{upstream}/\n"
    );
    let conf = write_config(dir.path(), "apache2.conf", &conf);
    let args: [&OsStr; 3] = ["-X".as_ref(), "-f".as_ref(), conf.as_os_str()];
    let paths = [
        "/usr/sbin/apache2",
        "/usr/sbin/httpd",
        "/usr/local/sbin/httpd",
    ];
    Proxy::start("apache2", &paths, &args, addr, dir, Some("error.log")).await
}

// ---- HAProxy ----------------------------------------------------------------------------------

/// The backend of docs/gateway.md ("Several gateways behind a load balancer") in front of
/// `gateways` (named gw1, gw2, …), checked every 100 ms; its stats socket is
/// [`haproxy_stats_socket`].
pub(crate) async fn haproxy(gateways: &[SocketAddr]) -> Proxy {
    let (dir, addr) = folder_and_address();
    let servers: String = gateways
        .iter()
        .enumerate()
        .map(|(i, gw)| {
            format!(
                "    server gw{} {gw} check check-ssl verify none send-proxy-v2\n",
                i + 1
            )
        })
        .collect();
    let conf = format!(
        "global\n    stats socket {sock} mode 600 level admin\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 10m\n    timeout server 10m\n\
         frontend vdi\n    bind {addr}\n    default_backend gateways\n\
         backend gateways\n    balance source\n    hash-type consistent\n\
         \x20   option httpchk GET /gateway/v1/health\n\
         \x20   default-server inter 100ms fall 1 rise 1\n{servers}",
        sock = stats_socket_in(dir.path()).display()
    );
    let conf = write_config(dir.path(), "haproxy.cfg", &conf);
    let args: [&OsStr; 3] = ["-db".as_ref(), "-f".as_ref(), conf.as_os_str()];
    let paths = [
        "/usr/sbin/haproxy",
        "/usr/local/sbin/haproxy",
        "/usr/bin/haproxy",
    ];
    Proxy::start("haproxy", &paths, &args, addr, dir, None).await
}

fn stats_socket_in(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

/// The stats socket of a [`haproxy`].
pub(crate) fn haproxy_stats_socket(haproxy: &Proxy) -> PathBuf {
    stats_socket_in(haproxy.dir.path())
}
