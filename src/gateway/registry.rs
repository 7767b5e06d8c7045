//! A standalone gateway's link to the broker it is registered with (`gatehouse gateway
//! --broker URL --gateway-token-file F`): it fetches the broker's public key, follows the
//! broker's "session ended" notices (closing those sessions' tunnels and refusing their
//! tickets), and reports its open tunnels every few seconds so the console can show them.
//!
//! The broker's side is `/api/v1/gateway/…` (`key`, `session-ends`, `report`), authenticated
//! by the gateway's token (`Authorization: Bearer`), which is never logged. Everything here
//! retries with a growing pause when the broker cannot be reached, and stops when told to.
//! It decides nothing about tunnels itself: [`Gateway`] does.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::client::{ClientError, Trust};
use super::{Gateway, TunnelReport};
use crate::broker::EndedSession;

/// Where the broker serves gateways.
pub const KEY_PATH: &str = "/api/v1/gateway/key";
pub const SESSION_ENDS_PATH: &str = "/api/v1/gateway/session-ends";
pub const REPORT_PATH: &str = "/api/v1/gateway/report";

/// How long the broker holds a session-ends request open when there is nothing new.
pub const LONG_POLL: Duration = Duration::from_secs(25);

/// The broker's answer to `GET /api/v1/gateway/session-ends?after=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEndsAnswer {
    /// The newest notice's number: ask for what comes after it next time.
    pub latest: u64,
    /// The notices after the one asked for, oldest first.
    pub ended: Vec<EndedSession>,
}

/// What a gateway posts to `/api/v1/gateway/report`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportBody {
    pub tunnels: Vec<TunnelReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the broker URL `{0}` is not usable: {1}")]
    Url(String, String),
    #[error(transparent)]
    Tls(#[from] ClientError),
    #[error("cannot reach the broker: {0}")]
    Unreachable(String),
    #[error(
        "the broker refused the gateway token: make a new token in Setup > Gateways and put it \
         in the token file"
    )]
    Refused,
    #[error("the broker answered {status}: {message}")]
    Answer { status: u16, message: String },
    #[error("the broker's answer cannot be read: {0}")]
    Malformed(String),
}

/// How often the link does what it does.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Between two tunnel reports.
    pub report_every: Duration,
    /// Between two fetches of the broker's key once one was fetched.
    pub key_refresh: Duration,
    /// The longest pause between retries after a failure.
    pub retry_max: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            report_every: Duration::from_secs(5),
            key_refresh: Duration::from_secs(300),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// An HTTP client for one broker, holding the gateway's token.
pub struct BrokerLink {
    client: reqwest::Client,
    base: String,
    token: String,
    pub timings: Timings,
}

impl std::fmt::Debug for BrokerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never printed.
        write!(f, "BrokerLink({})", self.base)
    }
}

impl BrokerLink {
    /// `broker_url` is the broker's console address (`https://broker.example.com[:port]`);
    /// `trust` says how its certificate is checked.
    pub fn new(broker_url: &str, token: &str, trust: Trust<'_>) -> Result<Self, RegistryError> {
        let bad = |why: &str| RegistryError::Url(broker_url.to_string(), why.to_string());
        let url = reqwest::Url::parse(broker_url.trim()).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad("it must start with https:// (or http://)"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("it names no host"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("give only the scheme, host, port and path"));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(RegistryError::Refused);
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("gatehouse-gateway/", env!("CARGO_PKG_VERSION")));
        if url.scheme() == "https" {
            builder = builder.tls_backend_preconfigured(super::client::client_config(trust)?);
        }
        let client = builder
            .build()
            .map_err(|e| RegistryError::Unreachable(e.to_string()))?;
        Ok(Self {
            client,
            base: url.as_str().trim_end_matches('/').to_string(),
            token: token.to_string(),
            timings: Timings::default(),
        })
    }

    /// The broker's address, as given.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The broker's public key, which tickets are checked with.
    pub async fn fetch_key(&self) -> Result<VerifyingKey, RegistryError> {
        let resp = self
            .client
            .get(format!("{}{KEY_PATH}", self.base))
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(unreachable)?;
        let text = checked(resp)
            .await?
            .text()
            .await
            .map_err(|e| RegistryError::Malformed(e.to_string()))?;
        VerifyingKey::from_public_key_pem(text.trim())
            .map_err(|e| RegistryError::Malformed(format!("not an ed25519 public key in PEM: {e}")))
    }

    /// The session-end notices after `after`; the broker holds the request up to
    /// [`LONG_POLL`] when there is none yet.
    pub async fn session_ends(&self, after: u64) -> Result<SessionEndsAnswer, RegistryError> {
        let resp = self
            .client
            .get(format!("{}{SESSION_ENDS_PATH}?after={after}", self.base))
            .bearer_auth(&self.token)
            .timeout(LONG_POLL + Duration::from_secs(15))
            .send()
            .await
            .map_err(unreachable)?;
        checked(resp)
            .await?
            .json()
            .await
            .map_err(|e| RegistryError::Malformed(e.to_string()))
    }

    /// Asks the broker whether it takes this gateway's token, without waiting for notices.
    pub async fn check_token(&self) -> Result<(), RegistryError> {
        let resp = self
            .client
            .get(format!("{}{SESSION_ENDS_PATH}?after=0&wait=0", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(unreachable)?;
        checked(resp).await.map(|_| ())
    }

    /// At start-up: waits until the broker answers and takes the token, retrying with a
    /// growing pause while it cannot be reached. `Ok(false)` when `stop` turns true first;
    /// [`RegistryError::Refused`] at once when the broker refuses the token (waiting would not
    /// help: the token file needs the gateway's current token).
    pub async fn wait_for_acceptance(
        &self,
        mut stop: watch::Receiver<bool>,
    ) -> Result<bool, RegistryError> {
        let mut backoff = Backoff::new(self.timings.retry_max);
        loop {
            let checked = tokio::select! {
                r = self.check_token() => r,
                _ = stopped(&mut stop) => return Ok(false),
            };
            match checked {
                Ok(()) => return Ok(true),
                Err(RegistryError::Refused) => return Err(RegistryError::Refused),
                Err(e) => {
                    let pause = backoff.next();
                    tracing::warn!(broker = %self.base, error = %e, ?pause, "the broker could not check the gateway token; retrying");
                    if !sleep_or_stop(pause, &mut stop).await {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Sends the open tunnels.
    pub async fn send_report(&self, tunnels: Vec<TunnelReport>) -> Result<(), RegistryError> {
        let resp = self
            .client
            .post(format!("{}{REPORT_PATH}", self.base))
            .bearer_auth(&self.token)
            .json(&ReportBody { tunnels })
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(unreachable)?;
        checked(resp).await.map(|_| ())
    }

    /// Fetches the key, retrying with a growing pause until it comes or `stop` turns true
    /// (then `None`). For start-up, before the gateway exists.
    pub async fn wait_for_key(&self, mut stop: watch::Receiver<bool>) -> Option<VerifyingKey> {
        let mut backoff = Backoff::new(self.timings.retry_max);
        loop {
            let fetched = tokio::select! {
                r = self.fetch_key() => r,
                _ = stopped(&mut stop) => return None,
            };
            match fetched {
                Ok(key) => return Some(key),
                Err(e) => {
                    let pause = backoff.next();
                    tracing::warn!(broker = %self.base, error = %e, ?pause, "the broker's key could not be fetched; retrying");
                    if !sleep_or_stop(pause, &mut stop).await {
                        return None;
                    }
                }
            }
        }
    }
}

fn unreachable(e: reqwest::Error) -> RegistryError {
    // Without the URL: a request's URL can carry nothing secret here, but keep lines short.
    RegistryError::Unreachable(e.without_url().to_string())
}

/// The response when it is a success; the broker's error otherwise.
async fn checked(resp: reqwest::Response) -> Result<reqwest::Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(RegistryError::Refused);
    }
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.chars().take(200).collect());
    Err(RegistryError::Answer {
        status: status.as_u16(),
        message,
    })
}

/// Pauses that double after each failure, up to a cap, and start over after a success.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);

    fn new(max: Duration) -> Self {
        Self {
            next: Self::FIRST.min(max),
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    fn reset(&mut self) {
        self.next = Self::FIRST.min(self.max);
    }
}

/// Resolves when `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps `pause`; `false` when told to stop first.
async fn sleep_or_stop(pause: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = stopped(stop) => false,
    }
}

/// Keeps `gateway` in touch with the broker until `stop` turns true: the key (at once, then
/// every [`Timings::key_refresh`]), the session-end notices (long-polled), and a report of the
/// open tunnels every [`Timings::report_every`].
pub async fn run(gateway: Arc<Gateway>, link: BrokerLink, stop: watch::Receiver<bool>) {
    tracing::info!(broker = %link.base, "gateway registry link started");
    tokio::join!(
        keep_key(&gateway, &link, stop.clone()),
        follow_ends(&gateway, &link, stop.clone()),
        report(&gateway, &link, stop),
    );
    tracing::info!(broker = %link.base, "gateway registry link stopped");
}

async fn keep_key(gateway: &Gateway, link: &BrokerLink, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(key) = link.wait_for_key(stop.clone()).await else {
            return;
        };
        gateway.set_key(key);
        tracing::debug!("broker key fetched");
        if !sleep_or_stop(link.timings.key_refresh, &mut stop).await {
            return;
        }
    }
}

async fn follow_ends(gateway: &Gateway, link: &BrokerLink, mut stop: watch::Receiver<bool>) {
    let mut seen = 0;
    let mut backoff = Backoff::new(link.timings.retry_max);
    loop {
        let answer = tokio::select! {
            r = link.session_ends(seen) => r,
            _ = stopped(&mut stop) => return,
        };
        match answer {
            Ok(answer) => {
                backoff.reset();
                for ended in &answer.ended {
                    let closed = gateway.end_session(&ended.session, ended.refuse_until);
                    if closed > 0 {
                        tracing::info!(session = %ended.session, closed, "the broker ended a session; its tunnels are closed");
                    }
                }
                if answer.latest < seen {
                    tracing::info!(
                        "the broker's notices start over (another broker, or its store was \
                         replaced); following from the start"
                    );
                }
                seen = answer.latest;
            }
            Err(e) => {
                let pause = backoff.next();
                tracing::warn!(broker = %link.base, error = %e, ?pause, "session-end notices could not be fetched; retrying");
                if !sleep_or_stop(pause, &mut stop).await {
                    return;
                }
            }
        }
    }
}

async fn report(gateway: &Gateway, link: &BrokerLink, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        let sent = tokio::select! {
            r = link.send_report(gateway.report()) => r,
            _ = stopped(&mut stop) => return,
        };
        match sent {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(broker = %link.base, "tunnel reports reach the broker again");
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(broker = %link.base, error = %e, "the tunnel report could not be sent; trying again");
                }
                failing = true;
            }
        }
        if !sleep_or_stop(link.timings.report_every, &mut stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_checked_and_the_token_is_never_printed() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let link = BrokerLink::new(
            "https://broker.example:8443/",
            " ghgw_secret ",
            Trust::System,
        )
        .expect("valid");
        assert_eq!(link.base, "https://broker.example:8443");
        assert_eq!(link.token, "ghgw_secret");
        assert!(!format!("{link:?}").contains("secret"));
        for bad in [
            "broker.example",
            "ftp://broker.example",
            "https://broker.example/?x=1",
            "https://user@broker.example",
        ] {
            assert!(
                matches!(
                    BrokerLink::new(bad, "t", Trust::Insecure),
                    Err(RegistryError::Url(..))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            BrokerLink::new("https://b.example", " ", Trust::Insecure),
            Err(RegistryError::Refused)
        ));
        assert!(matches!(
            BrokerLink::new(
                "https://b.example",
                "t",
                Trust::CaFile(std::path::Path::new("/nonexistent/ca.pem"))
            ),
            Err(RegistryError::Tls(_))
        ));
    }

    #[test]
    fn pauses_double_up_to_the_cap_and_start_over() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let seen: Vec<u64> = (0..5).map(|_| b.next().as_secs()).collect();
        assert_eq!(seen, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next(), Duration::from_secs(1));
    }

    #[test]
    fn a_report_reads_back_what_the_gateway_wrote() {
        let report = ReportBody {
            tunnels: vec![
                TunnelReport {
                    id: 1,
                    kind: super::super::Kind::Tunnel,
                    session: "s1".into(),
                    user: "alice".into(),
                    target: "10.0.0.5:3389".into(),
                    client: "192.0.2.9".parse().expect("ip"),
                    opened: chrono::Utc::now(),
                    bytes_up: 10,
                    bytes_down: 20,
                },
                TunnelReport {
                    id: 2,
                    kind: super::super::Kind::ForwardedPort(40001),
                    session: "s2".into(),
                    user: "bob".into(),
                    target: "[fd00::5]:5900".into(),
                    client: "2001:db8::9".parse().expect("ip"),
                    opened: chrono::Utc::now(),
                    bytes_up: 0,
                    bytes_down: 0,
                },
            ],
        };
        let text = serde_json::to_string(&report).expect("json");
        assert!(text.contains("\"kind\":\"tunnel\""), "{text}");
        assert!(
            text.contains("\"kind\":\"forwarded_port\",\"port\":40001"),
            "{text}"
        );
        let back: ReportBody = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back.tunnels.len(), 2);
        assert_eq!(back.tunnels[0].kind, super::super::Kind::Tunnel);
        assert_eq!(
            back.tunnels[1].kind,
            super::super::Kind::ForwardedPort(40001)
        );
        assert_eq!(back.tunnels[1].target, "[fd00::5]:5900");
        assert_eq!(back.tunnels[0].bytes_down, 20);
    }
}
