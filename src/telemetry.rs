//! Logs and metrics: the `tracing` subscriber, and the Prometheus text exposition for
//! `GET /metrics` (process memory, HTTP requests by route and status, sign-in failures, pool
//! counts, and each gateway's open tunnels as last reported).
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

/// One count of one pool: `state` is total, assigned, unassigned, available, running,
/// stopped, provisioning or connected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool_id: String,
    pub pool_name: String,
    pub state: String,
}

/// One gateway: the built-in one (`gateway_id` "builtin") or a registered one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    pub gateway_id: String,
    pub gateway_name: String,
}

/// One direction of one gateway's open tunnels: `direction` is up (client to desktop) or down.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayBytesLabels {
    pub gateway_id: String,
    pub gateway_name: String,
    pub direction: String,
}

/// What the gateway gauges show of one gateway.
pub struct GatewayGauges<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// It reported within the last 30 seconds (always, for the built-in gateway).
    pub connected: bool,
    pub tunnels: &'a [crate::gateway::TunnelReport],
}

/// The appliance's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub http_requests: Family<RequestLabels, Counter>,
    /// Every pool's desktops by state, as the last `pool_stats` run counted them.
    pub pool_desktops: Family<PoolLabels, Gauge>,
    pub signin_failures: Counter,
    /// Each gateway's open tunnels, whether it reports, and the bytes its open tunnels carried.
    gateway_tunnels: Family<GatewayLabels, Gauge>,
    gateway_connected: Family<GatewayLabels, Gauge>,
    gateway_tunnel_bytes: Family<GatewayBytesLabels, Gauge>,
    /// Held while a scrape sets the gateway gauges and renders, so two never mix.
    scrape: Mutex<()>,
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
        let pool_desktops = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_desktops",
            "Desktops of each pool by state (connected: with a user connected), as last counted",
            pool_desktops.clone(),
        );
        let gateway_tunnels = Family::<GatewayLabels, Gauge>::default();
        registry.register(
            "gateway_tunnels",
            "Open tunnels and forwarded connections of each gateway, as last reported",
            gateway_tunnels.clone(),
        );
        let gateway_connected = Family::<GatewayLabels, Gauge>::default();
        registry.register(
            "gateway_connected",
            "1 when the gateway reported within the last 30 seconds (the built-in one always)",
            gateway_connected.clone(),
        );
        let gateway_tunnel_bytes = Family::<GatewayBytesLabels, Gauge>::default();
        registry.register(
            "gateway_tunnel_bytes",
            "Bytes the gateway's open tunnels carried, up (client to desktop) and down",
            gateway_tunnel_bytes.clone(),
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
            pool_desktops,
            signin_failures,
            gateway_tunnels,
            gateway_connected,
            gateway_tunnel_bytes,
            scrape: Mutex::new(()),
            resident_memory,
            virtual_memory,
        }
    }

    /// Replaces the pool gauges with the counts of the last `pool_stats` run (a deleted pool's
    /// gauges go).
    pub fn set_pools(&self, stats: &[crate::model::stats::PoolStats]) {
        self.pool_desktops.clear();
        for pool in stats {
            for (state, value) in pool.counts.named() {
                self.pool_desktops
                    .get_or_create(&PoolLabels {
                        pool_id: pool.pool_id.clone(),
                        pool_name: pool.pool_name.clone(),
                        state: state.to_string(),
                    })
                    .set(i64::from(value));
            }
        }
    }

    /// Replaces the gateway gauges with `gateways` (a deleted gateway's gauges go).
    fn set_gateways<'a>(&self, gateways: impl IntoIterator<Item = GatewayGauges<'a>>) {
        self.gateway_tunnels.clear();
        self.gateway_connected.clear();
        self.gateway_tunnel_bytes.clear();
        for g in gateways {
            let labels = GatewayLabels {
                gateway_id: g.id.to_string(),
                gateway_name: g.name.to_string(),
            };
            let count = i64::try_from(g.tunnels.len()).unwrap_or(i64::MAX);
            self.gateway_tunnels.get_or_create(&labels).set(count);
            self.gateway_connected
                .get_or_create(&labels)
                .set(i64::from(g.connected));
            let up = g
                .tunnels
                .iter()
                .map(|t| t.bytes_up)
                .fold(0u64, u64::saturating_add);
            let down = g
                .tunnels
                .iter()
                .map(|t| t.bytes_down)
                .fold(0u64, u64::saturating_add);
            for (direction, bytes) in [("up", up), ("down", down)] {
                self.gateway_tunnel_bytes
                    .get_or_create(&GatewayBytesLabels {
                        gateway_id: labels.gateway_id.clone(),
                        gateway_name: labels.gateway_name.clone(),
                        direction: direction.into(),
                    })
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
    }

    /// `set_gateways`, then `render`, as one step: two scrapes at once never mix their gauges.
    pub fn render_with_gateways<'a>(
        &self,
        gateways: impl IntoIterator<Item = GatewayGauges<'a>>,
    ) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.set_gateways(gateways);
        self.render()
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
        m.set_pools(&[crate::model::stats::PoolStats {
            pool_id: "p1".into(),
            pool_name: "Lab".into(),
            at: chrono::Utc::now(),
            counts: crate::model::stats::PoolStatCounts {
                total: 3,
                assigned: 1,
                ..Default::default()
            },
        }]);
        let text = m.render();
        assert!(
            text.contains(
                r#"gatehouse_pool_desktops{pool_id="p1",pool_name="Lab",state="assigned"} 1"#
            ),
            "{text}"
        );
        m.set_pools(&[]);
        assert!(
            !m.render().contains("pool_id=\"p1\""),
            "a deleted pool's gauges go"
        );
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

    #[test]
    fn gateway_gauges_follow_the_last_reports() {
        use crate::gateway::{Kind, TunnelReport};
        let tunnel = |up, down| TunnelReport {
            id: 1,
            kind: Kind::Tunnel,
            session: "s".into(),
            user: "u".into(),
            target: "10.0.0.9:3389".into(),
            client: std::net::IpAddr::from([192, 0, 2, 1]),
            opened: chrono::Utc::now(),
            bytes_up: up,
            bytes_down: down,
        };
        let m = Metrics::new();
        let two = [tunnel(10, 100), tunnel(5, u64::MAX)];
        let text = m.render_with_gateways([
            GatewayGauges {
                id: "builtin",
                name: "Built-in",
                connected: true,
                tunnels: &[],
            },
            GatewayGauges {
                id: "g1",
                name: "DMZ",
                connected: false,
                tunnels: &two,
            },
        ]);
        for line in [
            r#"gatehouse_gateway_tunnels{gateway_id="builtin",gateway_name="Built-in"} 0"#,
            r#"gatehouse_gateway_connected{gateway_id="builtin",gateway_name="Built-in"} 1"#,
            r#"gatehouse_gateway_tunnels{gateway_id="g1",gateway_name="DMZ"} 2"#,
            r#"gatehouse_gateway_connected{gateway_id="g1",gateway_name="DMZ"} 0"#,
            r#"gatehouse_gateway_tunnel_bytes{gateway_id="g1",gateway_name="DMZ",direction="up"} 15"#,
            // The sum saturates instead of wrapping.
            r#"gatehouse_gateway_tunnel_bytes{gateway_id="g1",gateway_name="DMZ",direction="down"} 9223372036854775807"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(
            !m.render_with_gateways([]).contains("gateway_id="),
            "a deleted gateway's gauges go"
        );
    }
}
