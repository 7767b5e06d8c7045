//! Dashboard > Pool Statistics and `GET /api/v1/pools/{id}/stats`: each pool's current counts
//! (total, assigned, unassigned, available, running, stopped, being provisioned, users
//! connected) and its history, drawn on the server as an SVG line chart with axes, labels and
//! a legend (no script, so the console's content security policy holds).
//!
//! The counting and the history are the broker's (`broker::stats`); this module reads, shapes
//! and draws. No sled.

use actix_web::http::{Method, header};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pages::Page;
use super::resource::{AdminToken, ApiResult, Endpoint, invalid, schema};
use super::session::Console;
use super::{AppState, HttpError};
use crate::model::FieldError;
use crate::model::pool::Pool;
use crate::model::stats::{PoolSample, PoolStatCounts, PoolStats};

const PAGE: &str = "/admin/dashboard/pools";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(PAGE, web::get().to(page));
}

// ---- The admin API ----------------------------------------------------------------------------

pub fn endpoints() -> Vec<Endpoint> {
    let e = super::api::endpoint;
    vec![e(
        Method::GET,
        "/api/v1/pools/{id}/stats",
        "pools",
        "A pool's counts as last counted (by the pool_stats job), and its history, oldest \
         first (`?since=` an RFC 3339 time for the samples from then on)",
        vec![],
        (200, Some(schema::reference("PoolStatistics"))),
        true,
        || web::get().to(stats_api),
    )]
}

pub fn schemas() -> Vec<(&'static str, Value)> {
    use schema::{array, date_time, described, integer, nullable, object, reference, string};
    let counts = object(
        &[
            "total",
            "assigned",
            "unassigned",
            "available",
            "running",
            "stopped",
            "provisioning",
            "connected",
        ],
        vec![
            ("total", integer()),
            ("assigned", described(integer(), "Held by a user.")),
            ("unassigned", integer()),
            (
                "available",
                described(
                    integer(),
                    "Unassigned and running (or of unknown power state): could be offered now.",
                ),
            ),
            ("running", integer()),
            (
                "stopped",
                described(integer(), "Stopped, suspended or paused."),
            ),
            (
                "provisioning",
                described(integer(), "Being created by their center."),
            ),
            (
                "connected",
                described(integer(), "Desktops with a user connected."),
            ),
        ],
    );
    vec![
        ("PoolCounts", counts),
        (
            "PoolStatistics",
            object(
                &["pool_id", "pool_name", "current", "history"],
                vec![
                    ("pool_id", string()),
                    ("pool_name", string()),
                    (
                        "current",
                        described(
                            nullable(object(
                                &["at", "counts"],
                                vec![("at", date_time()), ("counts", reference("PoolCounts"))],
                            )),
                            "As the last pool_stats run counted (counted now when it has not \
                             run yet).",
                        ),
                    ),
                    (
                        "history",
                        array(object(
                            &["at", "counts"],
                            vec![("at", date_time()), ("counts", reference("PoolCounts"))],
                        )),
                    ),
                ],
            ),
        ),
    ]
}

#[derive(Serialize)]
struct Current {
    at: DateTime<Utc>,
    counts: PoolStatCounts,
}

#[derive(Serialize)]
struct Statistics {
    pool_id: String,
    pool_name: String,
    current: Option<Current>,
    history: Vec<PoolSample>,
}

#[derive(Deserialize, Default)]
struct StatsQuery {
    #[serde(default)]
    since: Option<String>,
}

fn since_of(query: &str) -> Result<Option<DateTime<Utc>>, HttpError> {
    let q: StatsQuery = serde_urlencoded::from_str(query).unwrap_or_default();
    match q.since.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| {
                invalid(
                    "request",
                    vec![FieldError::new(
                        "since",
                        format!(
                            "`{text}` is not an RFC 3339 time ({e}): write e.g. \
                             2026-11-21T08:00:00Z"
                        ),
                    )],
                )
            }),
    }
}

/// Every pool's current counts: as stored by the last count, or counted now when a pool has
/// none yet.
async fn current_all(state: &AppState) -> Result<Vec<PoolStats>, HttpError> {
    let (pools, stored) = state
        .store
        .call(|s| {
            let pools: Vec<Pool> = s.values::<Pool>()?;
            let stored: Vec<PoolStats> = s.values::<PoolStats>()?;
            Ok::<_, HttpError>((pools, stored))
        })
        .await?;
    if pools
        .iter()
        .all(|p| stored.iter().any(|s| s.pool_id == p.id))
    {
        let mut stored = stored;
        stored.retain(|s| pools.iter().any(|p| p.id == s.pool_id));
        stored.sort_by_key(|a| a.pool_name.to_lowercase());
        return Ok(stored);
    }
    Ok(state.broker.count_pools().await?)
}

async fn stats_api(
    state: web::Data<AppState>,
    _who: AdminToken,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult {
    let id = path.into_inner();
    let since = since_of(req.query_string())?;
    let lookup = id.clone();
    let pool = state
        .store
        .call(move |s| Ok::<_, HttpError>(s.get::<Pool>(&lookup)?))
        .await?
        .ok_or_else(|| HttpError::NoSuch {
            kind: "pool",
            id: id.clone(),
        })?;
    let current = current_all(&state)
        .await?
        .into_iter()
        .find(|p| p.pool_id == pool.id);
    let pool_id = pool.id.clone();
    let history = state
        .store
        .call(move |s| Ok::<_, HttpError>(crate::broker::stats::history(s, &pool_id, since)?))
        .await?;
    let body = Statistics {
        pool_id: pool.id,
        pool_name: pool.name,
        current: current.map(|c| Current {
            at: c.at,
            counts: c.counts,
        }),
        history,
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

// ---- The chart --------------------------------------------------------------------------------

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 64.0;

/// The series drawn, with their colours (distinct for the usual colour blindness).
const SERIES: [(&str, &str); 5] = [
    ("total", "#1f5f99"),
    ("assigned", "#d55e00"),
    ("available", "#009e73"),
    ("connected", "#cc79a7"),
    ("provisioning", "#e69f00"),
];

/// What the template draws: lines, ticks and legend in SVG coordinates.
#[derive(Debug, Serialize, PartialEq)]
pub struct Chart {
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
    pub x_ticks: Vec<Tick>,
    pub y_ticks: Vec<Tick>,
    pub series: Vec<Series>,
    pub empty: bool,
    /// A sentence for screen readers.
    pub label: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Tick {
    pub at: f64,
    pub label: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Series {
    pub name: String,
    pub colour: String,
    /// `x,y x,y …` for a polyline.
    pub points: String,
    /// Where a lone sample is drawn as a dot.
    pub dot: Option<(f64, f64)>,
    /// The legend's place.
    pub legend_x: f64,
    pub legend_y: f64,
}

/// A step for about four y ticks: 1, 2 or 5 times a power of ten.
fn nice_step(max: f64) -> f64 {
    let rough = (max / 4.0).max(1.0);
    let power = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power)
}

fn value(counts: &PoolStatCounts, name: &str) -> f64 {
    counts
        .named()
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0.0, |(_, v)| f64::from(*v))
}

/// Draws a pool's history from `from` to `to`.
pub fn chart(name: &str, samples: &[PoolSample], from: DateTime<Utc>, to: DateTime<Utc>) -> Chart {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (HEIGHT - BOTTOM, TOP);
    let span = (to - from).num_milliseconds().max(1) as f64;
    let x_of = |t: DateTime<Utc>| x0 + (x1 - x0) * ((t - from).num_milliseconds() as f64 / span);
    let max = samples
        .iter()
        .flat_map(|s| SERIES.iter().map(|(n, _)| value(&s.counts, n)))
        .fold(0.0, f64::max);
    let step = nice_step(max);
    let top = (max / step).ceil().max(1.0) * step;
    let y_of = |v: f64| y0 - (y0 - y1) * (v / top);
    let y_ticks = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|v| *v <= top + 0.5)
        .map(|v| Tick {
            at: round(y_of(v)),
            label: format!("{v:.0}"),
        })
        .collect();
    let format = if to - from > Duration::days(2) {
        "%m-%d"
    } else {
        "%H:%M"
    };
    let x_ticks = (0..=4)
        .map(|i| {
            let t = from + Duration::milliseconds((span * f64::from(i) / 4.0) as i64);
            Tick {
                at: round(x_of(t)),
                label: t.format(format).to_string(),
            }
        })
        .collect();
    let series = SERIES
        .iter()
        .enumerate()
        .map(|(i, (series, colour))| {
            let points: Vec<(f64, f64)> = samples
                .iter()
                .map(|s| (round(x_of(s.at)), round(y_of(value(&s.counts, series)))))
                .collect();
            Series {
                name: label(series).to_string(),
                colour: (*colour).to_string(),
                points: points
                    .iter()
                    .map(|(x, y)| format!("{x},{y}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                dot: (points.len() == 1).then(|| points[0]),
                legend_x: LEFT + 130.0 * i as f64,
                legend_y: HEIGHT - 6.0,
            }
        })
        .collect();
    Chart {
        width: WIDTH,
        height: HEIGHT,
        left: x0,
        right: x1,
        top: y1,
        bottom: y0,
        x_ticks,
        y_ticks,
        series,
        empty: samples.is_empty(),
        label: format!(
            "Desktops of pool {name} over time: {} samples from {} to {}",
            samples.len(),
            from.format("%Y-%m-%d %H:%M UTC"),
            to.format("%Y-%m-%d %H:%M UTC")
        ),
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

// ---- The page ---------------------------------------------------------------------------------

#[derive(Serialize)]
struct PoolView {
    id: String,
    name: String,
    counted: String,
    counts: Vec<(String, u32)>,
    chart: Chart,
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    days: Option<u32>,
}

const RANGES: [(u32, &str); 4] = [
    (1, "Last day"),
    (7, "Last week"),
    (30, "Last 30 days"),
    (90, "Last 90 days"),
];

async fn page(
    state: web::Data<AppState>,
    who: Console,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, HttpError> {
    let days = query
        .days
        .filter(|d| RANGES.iter().any(|(r, _)| r == d))
        .unwrap_or(1);
    let now = Utc::now();
    let from = now - Duration::days(i64::from(days));
    let current = current_all(&state).await?;
    let ids: Vec<String> = current.iter().map(|p| p.pool_id.clone()).collect();
    let histories = state
        .store
        .call(move |s| {
            ids.iter()
                .map(|id| Ok(crate::broker::stats::history(s, id, Some(from))?))
                .collect::<Result<Vec<_>, HttpError>>()
        })
        .await?;
    let pools: Vec<PoolView> = current
        .into_iter()
        .zip(histories)
        .map(|(p, history)| PoolView {
            chart: chart(&p.pool_name, &history, from, now),
            counted: p.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            counts: p
                .counts
                .named()
                .iter()
                .map(|(n, v)| (label(n).to_string(), *v))
                .collect(),
            id: p.pool_id,
            name: p.pool_name,
        })
        .collect();
    let ranges: Vec<(String, String, bool)> = RANGES
        .iter()
        .map(|(d, l)| (format!("{PAGE}?days={d}"), (*l).to_string(), *d == days))
        .collect();
    let mut page = Page::new(
        &state,
        Some(&who),
        "pool_stats.html",
        "Pool Statistics",
        PAGE,
    )
    .await?;
    page.set("pools", &pools).set("ranges", &ranges);
    page.render(&state)
}

fn label(count: &str) -> &'static str {
    match count {
        "total" => "Total",
        "assigned" => "Assigned",
        "unassigned" => "Unassigned",
        "available" => "Available",
        "running" => "Running",
        "stopped" => "Stopped",
        "provisioning" => "Being provisioned",
        _ => "Users connected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: DateTime<Utc>, total: u32, assigned: u32) -> PoolSample {
        PoolSample {
            at,
            counts: PoolStatCounts {
                total,
                assigned,
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_chart_spans_the_range_with_readable_ticks() {
        let to = Utc::now();
        let from = to - Duration::days(1);
        let c = chart("Lab", &[sample(from, 10, 0), sample(to, 10, 7)], from, to);
        assert!(!c.empty);
        assert_eq!(
            c.y_ticks
                .iter()
                .map(|t| t.label.as_str())
                .collect::<Vec<_>>(),
            ["0", "5", "10"]
        );
        assert_eq!(c.x_ticks.len(), 5);
        let total = &c.series[0];
        assert_eq!(total.name, "Total");
        // From the left edge to the right edge, at the top (10 of 10).
        assert_eq!(
            total.points,
            format!("{LEFT},{TOP} {},{TOP}", WIDTH - RIGHT)
        );
        assert!(c.series.iter().all(|s| s.dot.is_none()));
        let lone = chart("Lab", &[sample(to, 3, 1)], from, to);
        assert!(lone.series[0].dot.is_some(), "a lone sample shows as a dot");
        let none = chart("Lab", &[], from, to);
        assert!(none.empty);
        assert_eq!(none.y_ticks.len(), 2, "0 and 1 when there is nothing");
    }

    #[test]
    fn steps_are_round_numbers() {
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(40.0), 10.0);
        assert_eq!(nice_step(1000.0), 500.0);
    }

    #[test]
    fn since_is_read_or_refused() {
        assert_eq!(since_of("").expect("none"), None);
        assert!(
            since_of("since=2026-11-21T08:00:00Z")
                .expect("time")
                .is_some()
        );
        let Err(HttpError::Invalid { fields, .. }) = since_of("since=yesterday") else {
            panic!("accepted");
        };
        assert_eq!(fields[0].field, "since");
    }
}
