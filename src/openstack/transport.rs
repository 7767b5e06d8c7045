//! The HTTP side of the OpenStack client: one `reqwest` client per center with its
//! certificate trust and timeouts, sending a request, and turning what comes back (or does
//! not) into the module's [`Error`]s.
//!
//! Connections are not kept between requests (`pool_max_idle_per_host(0)`): OpenStack APIs
//! behind uwsgi or a load balancer close idle connections at will, and a pooled connection the
//! server already closed fails the next request. A new connection per request costs a
//! handshake every few seconds at most, which the inventory's pace allows.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;

use super::error::{Error, Result, Service, cloud_message};
use crate::model::FieldError;
use crate::model::center::Center;

/// How long Gatehouse waits for the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Name lookup, TCP connect and TLS handshake.
    pub connect: Duration,
    /// One whole request, answer included.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
        }
    }
}

/// The client for one center: its trust settings and timeouts.
#[derive(Clone)]
pub(crate) struct Transport {
    client: reqwest::Client,
    pub(crate) timeouts: Timeouts,
}

impl Transport {
    pub(crate) fn new(center: &Center, timeouts: Timeouts) -> Result<Transport> {
        let tls = tls_config(center)?;
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .pool_max_idle_per_host(0)
            // A redirect would turn the login into a GET and could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| Error::Invalid(vec![FieldError::new("auth_url", e.to_string())]))?;
        Ok(Transport { client, timeouts })
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the request; an answer of any status is `Ok`, no answer is the matching error.
    pub(crate) async fn send(
        &self,
        service: Service,
        url: &str,
        request: RequestBuilder,
    ) -> Result<Response> {
        request
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.no_answer(service, url, &e))
    }

    /// The error for a request that got no answer.
    pub(crate) fn no_answer(&self, service: Service, url: &str, e: &reqwest::Error) -> Error {
        let url = shown_url(url);
        if let Some(detail) = tls_problem(e) {
            return Error::Tls { url, detail };
        }
        if e.is_timeout() {
            return Error::Timeout {
                service,
                url,
                secs: if e.is_connect() {
                    self.timeouts.connect.as_secs()
                } else {
                    self.timeouts.request.as_secs()
                },
            };
        }
        Error::Unreachable {
            service,
            url,
            detail: unreachable_detail(e),
        }
    }
}

/// The answer's body as `T` when the status is a success, else the cloud's error.
pub(crate) async fn json<T: DeserializeOwned>(service: Service, resp: Response) -> Result<T> {
    let resp = success(service, resp).await?;
    let bytes = resp.bytes().await.map_err(|e| Error::Malformed {
        service,
        detail: format!("the answer broke off ({})", e.without_url()),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
        service,
        detail: format!(
            "{e} in `{}`",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ),
    })
}

/// The answer when its status is a success, else [`Error::Cloud`] with the cloud's message.
pub(crate) async fn success(service: Service, resp: Response) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    Err(cloud_error(service, status, resp).await)
}

pub(crate) async fn cloud_error(service: Service, status: StatusCode, resp: Response) -> Error {
    let body = resp.text().await.unwrap_or_default();
    let message = cloud_message(&body).unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    });
    if service == Service::Compute && status == StatusCode::NOT_ACCEPTABLE {
        // Nova's answer to a microversion it does not have.
        return Error::Unsupported {
            service,
            message: format!(
                "{message} (Gatehouse needs compute API microversion {})",
                super::nova::COMPUTE_API_VERSION
            ),
        };
    }
    Error::Cloud {
        service,
        status: status.as_u16(),
        message,
    }
}

/// The URL as shown in messages: without its query.
fn shown_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

/// The sources of an error, outermost first.
fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = vec![e];
    let mut next = e.source();
    while let Some(inner) = next {
        out.push(inner);
        // `io::Error::source` skips the error it wraps: look inside explicitly.
        next = match inner.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|x| x as &(dyn StdError + 'static)),
            None => inner.source(),
        };
    }
    out
}

/// What went wrong in the TLS handshake, when that is why there is no answer.
fn tls_problem(e: &reqwest::Error) -> Option<String> {
    for inner in chain(e) {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(match tls {
                rustls::Error::InvalidCertificate(why) => match why {
                    rustls::CertificateError::UnknownIssuer => {
                        "it is signed by an authority Gatehouse does not know".to_string()
                    }
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. } => {
                        "it is not made out to this host name".to_string()
                    }
                    rustls::CertificateError::Expired
                    | rustls::CertificateError::ExpiredContext { .. } => {
                        "it has expired".to_string()
                    }
                    other => format!("invalid certificate: {other:?}"),
                },
                other => other.to_string(),
            });
        }
    }
    None
}

/// A short reason for a failed connection.
fn unreachable_detail(e: &reqwest::Error) -> String {
    let parts = chain(e);
    let text: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
    if text.iter().any(|t| t.contains("dns error")) {
        let lookup = text
            .iter()
            .rev()
            .find(|t| !t.contains("dns error"))
            .cloned()
            .unwrap_or_default();
        return format!("the host name does not resolve ({lookup})");
    }
    for p in &parts {
        if let Some(io) = p.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "the connection was refused: nothing listens at that address and port"
                        .to_string()
                }
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof => {
                    "the connection was closed before an answer came".to_string()
                }
                _ => io.to_string(),
            };
        }
    }
    // The innermost distinct messages: "error sending request" alone says nothing.
    let mut seen: Vec<String> = Vec::new();
    for t in text.into_iter().skip(1) {
        if !seen.iter().any(|s| s.contains(&t)) {
            seen.push(t);
        }
    }
    if seen.is_empty() {
        e.to_string()
    } else {
        seen.join(": ")
    }
}

/// The TLS settings of a center: its pasted CA, no check at all, or the system's CAs.
fn tls_config(center: &Center) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(vec![FieldError::new("ca_pem", e.to_string())]))?;
    let bad_ca = |why: String| Error::Invalid(vec![FieldError::new("ca_pem", why)]);
    let pem = center.ca_pem.as_deref().map(str::trim).unwrap_or_default();
    let mut roots = rustls::RootCertStore::empty();
    let config = if center.insecure && pem.is_empty() {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::NoVerification(provider)))
            .with_no_client_auth()
    } else if !pem.is_empty() {
        let certs: Vec<CertificateDer<'static>> =
            rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad_ca(format!("the CA certificate is not valid PEM ({e})")))?;
        if certs.is_empty() {
            return Err(bad_ca(
                "no certificate found in the pasted CA: include its -----BEGIN CERTIFICATE----- \
                 line"
                    .to_string(),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad_ca(format!("the CA certificate cannot be used ({e})")))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(config)
}
