//! Logs and metrics: the `tracing` subscriber, and the Prometheus text exposition for
//! `GET /metrics` (process memory, HTTP requests by route and status, sign-in failures).
//!
//! Nothing here logs a secret: callers pass account names and addresses, never passwords,
//! keys or tickets.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::LogConfig;

/// Installs the global subscriber. `RUST_LOG` wins over the configured level.
pub fn init_logging(config: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests) keeps the first subscriber.
    let _ = if config.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// The appliance's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub http_requests: Family<RequestLabels, Counter>,
    pub signin_failures: Counter,
    resident_memory: Gauge,
    virtual_memory: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route pattern, method and status",
            http_requests.clone(),
        );
        let signin_failures = Counter::default();
        registry.register(
            "signin_failures",
            "Console sign-ins refused (wrong password, locked out)",
            signin_failures.clone(),
        );
        let resident_memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            resident_memory.clone(),
        );
        let virtual_memory = Gauge::default();
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory of the process",
            virtual_memory.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            http_requests,
            signin_failures,
            resident_memory,
            virtual_memory,
        }
    }

    /// The Prometheus text format of every metric, with memory read now.
    pub fn render(&self) -> String {
        if let Some((rss, vsz)) = process_memory() {
            self.resident_memory.set(rss as i64);
            self.virtual_memory.set(vsz as i64);
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Resident and virtual memory of this process in bytes, from `/proc/self/statm`.
pub fn process_memory() -> Option<(u64, u64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_whitespace().map(|f| f.parse::<u64>().ok());
    let pages = fields.next()??;
    let resident = fields.next()??;
    let page = 4096;
    Some((resident * page, pages * page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_memory() {
        let m = Metrics::new();
        m.http_requests
            .get_or_create(&RequestLabels {
                route: "/healthz".into(),
                method: "GET".into(),
                status: 200,
            })
            .inc();
        m.signin_failures.inc();
        let text = m.render();
        assert!(
            text.contains(
                r#"gatehouse_http_requests_total{route="/healthz",method="GET",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("gatehouse_signin_failures_total 1"), "{text}");
        let rss_line = text
            .lines()
            .find(|l| l.starts_with("gatehouse_process_resident_memory_bytes "))
            .expect("rss line");
        let rss: u64 = rss_line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("number");
        assert!(rss > 0);
    }
}
