//! [`Cloud`]: one center's connection. It logs in to Keystone when it first needs to, keeps
//! the token, renews it [`RENEW_BEFORE`] before it expires, and when a service answers 401
//! (the token was revoked, or the cloud restarted with new keys) logs in again and repeats
//! the call once.
//!
//! Build one `Cloud` per center and keep it while the center's settings do not change; a
//! changed center needs a new `Cloud`.

use std::sync::Arc;

use chrono::{Duration, Utc};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

use super::error::{Error, Result, Service};
use super::keystone::{self, AUTH_TOKEN, Endpoints, Token};
use super::nova::COMPUTE_API_VERSION;
use super::transport::{self, Timeouts, Transport};
use crate::model::center::Center;

/// A token is renewed this long before it expires.
pub const RENEW_BEFORE: Duration = Duration::minutes(5);

/// A logged-in (or about to be) connection to one center's cloud.
pub struct Cloud {
    center: Center,
    keystone: String,
    transport: Transport,
    token: Mutex<Option<Arc<Token>>>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The center's Debug hides the password; the token is never printed.
        f.debug_struct("Cloud")
            .field("center", &self.center.id)
            .field("keystone", &self.keystone)
            .finish_non_exhaustive()
    }
}

impl Cloud {
    /// A connection with the default timeouts. Nothing is sent yet; only the Keystone address
    /// and the CA are checked.
    pub fn new(center: &Center) -> Result<Cloud> {
        Cloud::with_timeouts(center, Timeouts::default())
    }

    pub fn with_timeouts(center: &Center, timeouts: Timeouts) -> Result<Cloud> {
        let keystone = center.keystone_url().map_err(|reason| Error::BadUrl {
            url: center.auth_url.trim().to_string(),
            reason: format!("is not usable: {reason}"),
        })?;
        Ok(Cloud {
            center: center.clone(),
            keystone: keystone.as_str().trim_end_matches('/').to_string(),
            transport: Transport::new(center, timeouts)?,
            token: Mutex::new(None),
        })
    }

    /// The center this connection was made for.
    pub fn center(&self) -> &Center {
        &self.center
    }

    /// Keystone's v3 address as used.
    pub fn keystone_url(&self) -> &str {
        &self.keystone
    }

    /// The current token: the kept one while it has more than [`RENEW_BEFORE`] left, else a
    /// new login. A token fresh from Keystone is used even when it lives shorter than that.
    pub async fn token(&self) -> Result<Arc<Token>> {
        let mut kept = self.token.lock().await;
        if let Some(token) = kept.as_ref()
            && token.expires_at - RENEW_BEFORE > Utc::now()
        {
            return Ok(token.clone());
        }
        let token = Arc::new(self.authenticate().await?);
        *kept = Some(token.clone());
        Ok(token)
    }

    /// Logs in now, whatever token is kept, and keeps the new one.
    pub async fn login(&self) -> Result<Arc<Token>> {
        let mut kept = self.token.lock().await;
        let token = Arc::new(self.authenticate().await?);
        *kept = Some(token.clone());
        Ok(token)
    }

    /// The services' addresses from the current token's catalog.
    pub async fn endpoints(&self) -> Result<Endpoints> {
        Ok(self.token().await?.endpoints.clone())
    }

    async fn authenticate(&self) -> Result<Token> {
        tracing::debug!(center = %self.center.id, keystone = %self.keystone, "logging in to Keystone");
        keystone::authenticate(&self.transport, &self.center, &self.keystone).await
    }

    /// Forgets `used` if it is still the kept token (another call may have renewed it).
    async fn forget(&self, used: &Arc<Token>) {
        let mut kept = self.token.lock().await;
        if kept.as_ref().is_some_and(|t| Arc::ptr_eq(t, used)) {
            *kept = None;
        }
    }

    /// Sends `method path` (path and query, from the service's base address) with the token;
    /// on a 401, logs in again and sends it once more. A success status gives the answer; any
    /// other is the cloud's error.
    pub(crate) async fn request(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response> {
        let token = self.token().await?;
        let resp = self.send_once(service, &method, path, body, &token).await?;
        let resp = if resp.status() == StatusCode::UNAUTHORIZED {
            tracing::debug!(center = %self.center.id, %service, "token refused; logging in again");
            self.forget(&token).await;
            let token = self.token().await?;
            self.send_once(service, &method, path, body, &token).await?
        } else {
            resp
        };
        transport::success(service, resp).await
    }

    async fn send_once(
        &self,
        service: Service,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        token: &Token,
    ) -> Result<reqwest::Response> {
        let url = format!("{}{path}", token.endpoints.of(service)?);
        let mut request = self
            .transport
            .client()
            .request(method.clone(), &url)
            .header(AUTH_TOKEN, token.value());
        if service == Service::Compute {
            request = request
                .header(
                    "OpenStack-API-Version",
                    format!("compute {COMPUTE_API_VERSION}"),
                )
                .header("X-OpenStack-Nova-API-Version", COMPUTE_API_VERSION);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        tracing::trace!(center = %self.center.id, %service, %method, path, "OpenStack request");
        self.transport.send(service, &url, request).await
    }

    /// `GET path` as JSON.
    pub(crate) async fn get<T: DeserializeOwned>(&self, service: Service, path: &str) -> Result<T> {
        self.send_json(service, Method::GET, path, None).await
    }

    pub(crate) async fn send_json<T: DeserializeOwned>(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        let resp = self.request(service, method, path, body).await?;
        transport::json(service, resp).await
    }
}
