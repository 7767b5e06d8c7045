//! Keystone v3: the password login scoped to a project in a domain, the token it returns,
//! and the endpoints the token's catalog names for the center's region and interface.
//!
//! When Keystone refuses a scoped login, a second, unscoped login tells the two causes apart:
//! if it succeeds, the password is right and the project (or its domain, or the user's role on
//! it) is the problem, and the projects the user can use are listed for the message.

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{Error, Result, Service, cloud_message};
use super::transport::{self, Transport};
use crate::model::center::Center;

/// The header Keystone returns a new token in, and the one requests carry it in.
pub const SUBJECT_TOKEN: &str = "X-Subject-Token";
pub const AUTH_TOKEN: &str = "X-Auth-Token";

/// A project-scoped token and what came with it.
#[derive(Clone)]
pub struct Token {
    value: String,
    pub expires_at: DateTime<Utc>,
    pub user_id: String,
    pub project_id: String,
    pub endpoints: Endpoints,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never printed.
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .field("user_id", &self.user_id)
            .field("project_id", &self.project_id)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Token {
    pub(crate) fn value(&self) -> &str {
        &self.value
    }
}

/// The base addresses of the services, from the catalog, without a trailing `/`. Image and
/// network addresses are the service roots (`/v2`, `/v2.0` removed); compute and volume are
/// the versioned addresses the catalog gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub compute: String,
    pub image: String,
    pub network: String,
    /// `None`: the cloud has no block storage (volumes cannot be created).
    pub volume: Option<String>,
}

impl Endpoints {
    /// The base address of `service`; a missing volume service is [`Error::MissingService`].
    pub fn of(&self, service: Service) -> Result<&str> {
        match service {
            Service::Compute => Ok(&self.compute),
            Service::Image => Ok(&self.image),
            Service::Network => Ok(&self.network),
            Service::Volume => self
                .volume
                .as_deref()
                .ok_or(Error::MissingService { service }),
            Service::Identity => Err(Error::MissingService { service }),
        }
    }
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenData,
}

#[derive(Deserialize)]
struct TokenData {
    expires_at: DateTime<Utc>,
    user: Named,
    #[serde(default)]
    project: Option<Named>,
    #[serde(default)]
    catalog: Vec<CatalogEntry>,
}

#[derive(Deserialize)]
struct Named {
    id: String,
}

#[derive(Deserialize)]
struct CatalogEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<CatalogEndpoint>,
}

#[derive(Deserialize)]
struct CatalogEndpoint {
    interface: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    region_id: Option<String>,
    url: String,
}

/// Logs in as the center's user, scoped to its project.
pub(crate) async fn authenticate(
    transport: &Transport,
    center: &Center,
    keystone: &str,
) -> Result<Token> {
    let url = format!("{keystone}/auth/tokens");
    let resp = post_auth(transport, &url, &auth_body(center, true)).await?;
    let status = resp.status();
    if status == StatusCode::CREATED || status == StatusCode::OK {
        let value = subject_token(&resp, keystone)?;
        let body: TokenBody = transport::json(Service::Identity, resp).await?;
        return token(center, value, body.token);
    }
    if status.is_redirection()
        && let Some(location) = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
    {
        return Err(Error::BadUrl {
            url: keystone.to_string(),
            reason: format!(
                "sends a login elsewhere (HTTP {} to {location}): give Keystone's own v3 \
                 address instead",
                status.as_u16()
            ),
        });
    }
    let message = message_of(resp).await;
    match (status, message) {
        (StatusCode::UNAUTHORIZED, message) => {
            let message = message.unwrap_or_else(|| "HTTP 401".to_string());
            refused(transport, center, keystone, message).await
        }
        (StatusCode::NOT_FOUND | StatusCode::FORBIDDEN, Some(message)) => {
            refused(transport, center, keystone, message).await
        }
        // Something answers, but not as Keystone does (Nova's 300, Glance's 404 page, …).
        (status, None) if !status.is_server_error() => Err(Error::BadUrl {
            url: keystone.to_string(),
            reason: format!(
                "answers HTTP {} to a login: it is not Keystone's v3 address (usually \
                 https://host:5000/v3)",
                status.as_u16()
            ),
        }),
        (status, message) => Err(Error::Cloud {
            service: Service::Identity,
            status: status.as_u16(),
            message: message.unwrap_or_else(|| status.to_string()),
        }),
    }
}

/// Keystone refused the scoped login: the password, or the project?
async fn refused(
    transport: &Transport,
    center: &Center,
    keystone: &str,
    message: String,
) -> Result<Token> {
    let url = format!("{keystone}/auth/tokens");
    let resp = post_auth(transport, &url, &auth_body(center, false)).await?;
    if !resp.status().is_success() {
        return Err(Error::Credentials {
            user: center.username.trim().to_string(),
            domain: center.user_domain.trim().to_string(),
            message,
        });
    }
    let available = match resp.headers().get(SUBJECT_TOKEN) {
        Some(unscoped) => projects(transport, keystone, unscoped.clone()).await,
        None => Vec::new(),
    };
    Err(Error::Scope {
        user: center.username.trim().to_string(),
        project: center.project.trim().to_string(),
        domain: center.project_domain.trim().to_string(),
        message,
        available,
    })
}

/// The names of the projects an unscoped token may be scoped to (empty on any failure: this
/// only improves a message).
async fn projects(
    transport: &Transport,
    keystone: &str,
    unscoped: reqwest::header::HeaderValue,
) -> Vec<String> {
    let url = format!("{keystone}/auth/projects");
    let request = transport.client().get(&url).header(AUTH_TOKEN, unscoped);
    let Ok(resp) = transport.send(Service::Identity, &url, request).await else {
        return Vec::new();
    };
    let Ok(body) = transport::json::<Value>(Service::Identity, resp).await else {
        return Vec::new();
    };
    let mut names: Vec<String> = body["projects"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn post_auth(transport: &Transport, url: &str, body: &Value) -> Result<reqwest::Response> {
    let request = transport.client().post(url).json(body);
    transport.send(Service::Identity, url, request).await
}

async fn message_of(resp: reqwest::Response) -> Option<String> {
    let body = resp.text().await.unwrap_or_default();
    // Only Keystone's own error shape counts as Keystone speaking.
    let keystone_shaped = serde_json::from_str::<Value>(&body)
        .map(|v| v["error"].is_object())
        .unwrap_or(false);
    if keystone_shaped {
        cloud_message(&body)
    } else {
        None
    }
}

fn subject_token(resp: &reqwest::Response, keystone: &str) -> Result<String> {
    resp.headers()
        .get(SUBJECT_TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::BadUrl {
            url: keystone.to_string(),
            reason: format!(
                "answered a login without an {SUBJECT_TOKEN} header: it is not Keystone v3"
            ),
        })
}

/// The login request: password of a user in a domain, scoped (or not) to a project in a
/// domain, all by name.
fn auth_body(center: &Center, scoped: bool) -> Value {
    let mut auth = json!({
        "identity": {
            "methods": ["password"],
            "password": {
                "user": {
                    "name": center.username.trim(),
                    "domain": {"name": center.user_domain.trim()},
                    "password": center.password,
                }
            }
        }
    });
    if scoped {
        auth["scope"] = json!({
            "project": {
                "name": center.project.trim(),
                "domain": {"name": center.project_domain.trim()},
            }
        });
    }
    json!({ "auth": auth })
}

fn token(center: &Center, value: String, data: TokenData) -> Result<Token> {
    let project = data.project.ok_or_else(|| Error::Malformed {
        service: Service::Identity,
        detail: "the token is not scoped to a project".to_string(),
    })?;
    let endpoints = endpoints(center, &data.catalog)?;
    Ok(Token {
        value,
        expires_at: data.expires_at,
        user_id: data.user.id,
        project_id: project.id,
        endpoints,
    })
}

fn endpoints(center: &Center, catalog: &[CatalogEntry]) -> Result<Endpoints> {
    let need = |service| pick(center, catalog, service)?.ok_or(Error::MissingService { service });
    let compute = need(Service::Compute)?;
    let image = need(Service::Image)?;
    let network = need(Service::Network)?;
    // Volumes are optional: no block storage in this region is the same as none at all.
    let volume = match pick(center, catalog, Service::Volume) {
        Ok(url) => url,
        Err(Error::Catalog { .. }) => None,
        Err(e) => return Err(e),
    };
    Ok(Endpoints {
        compute,
        image: strip_version(&image, &["/v2", "/v2.0"]),
        network: strip_version(&network, &["/v2.0"]),
        volume,
    })
}

/// The URL of `service` for the center's region and interface; `None` when the catalog has no
/// such service at all.
fn pick(center: &Center, catalog: &[CatalogEntry], service: Service) -> Result<Option<String>> {
    let types: &[&str] = match service {
        // `block-storage` is the newer official name of the same service.
        Service::Volume => &["volumev3", "block-storage"],
        other => &[other.catalog_type()],
    };
    let entries: Vec<&CatalogEntry> = catalog
        .iter()
        .filter(|e| types.contains(&e.kind.as_str()))
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let region = center.region.trim();
    let interface = center.interface.as_str();
    let found = entries.iter().flat_map(|e| e.endpoints.iter()).find(|ep| {
        ep.interface.eq_ignore_ascii_case(interface)
            && (ep.region_id.as_deref() == Some(region) || ep.region.as_deref() == Some(region))
    });
    match found {
        Some(ep) => Ok(Some(ep.url.trim().trim_end_matches('/').to_string())),
        None => {
            let mut offered: Vec<String> = entries
                .iter()
                .flat_map(|e| e.endpoints.iter())
                .map(|ep| {
                    format!(
                        "{}/{}",
                        ep.region_id
                            .as_deref()
                            .or(ep.region.as_deref())
                            .unwrap_or("(no region)"),
                        ep.interface
                    )
                })
                .collect();
            offered.sort();
            offered.dedup();
            Err(Error::Catalog {
                service,
                region: region.to_string(),
                interface: interface.to_string(),
                offered: if offered.is_empty() {
                    "nothing".to_string()
                } else {
                    offered.join(", ")
                },
            })
        }
    }
}

fn strip_version(url: &str, versions: &[&str]) -> String {
    let url = url.trim_end_matches('/');
    for v in versions {
        if let Some(root) = url.strip_suffix(v) {
            return root.to_string();
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::center::Interface;

    fn catalog() -> Vec<CatalogEntry> {
        let json = json!([
            {"type": "compute", "endpoints": [
                {"interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": "https://nova.example/v2.1/"},
                {"interface": "internal", "region": "RegionOne", "region_id": "RegionOne", "url": "http://nova.internal/v2.1"},
                {"interface": "public", "region_id": "Two", "url": "https://nova.two/v2.1"}
            ]},
            {"type": "image", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "https://glance.example/v2"},
                {"interface": "public", "region_id": "Two", "url": "https://glance.two"}
            ]},
            {"type": "network", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "https://neutron.example/"},
                {"interface": "public", "region_id": "Two", "url": "https://neutron.two/v2.0"}
            ]},
            {"type": "block-storage", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "https://cinder.example/v3/p1"}
            ]}
        ]);
        serde_json::from_value(json).expect("catalog")
    }

    fn center(region: &str, interface: Interface) -> Center {
        Center {
            region: region.into(),
            interface,
            ..Center::default()
        }
    }

    #[test]
    fn endpoints_follow_region_and_interface() {
        let e = endpoints(&center("RegionOne", Interface::Public), &catalog()).expect("found");
        assert_eq!(e.compute, "https://nova.example/v2.1");
        assert_eq!(e.image, "https://glance.example");
        assert_eq!(e.network, "https://neutron.example");
        assert_eq!(e.volume.as_deref(), Some("https://cinder.example/v3/p1"));

        let e = endpoints(&center("Two", Interface::Public), &catalog()).expect("found");
        assert_eq!(e.compute, "https://nova.two/v2.1");
        assert_eq!(e.image, "https://glance.two");
        assert_eq!(e.network, "https://neutron.two");
        assert_eq!(
            e.volume, None,
            "no volume endpoint in Two: none, not an error"
        );
    }

    #[test]
    fn a_missing_region_or_interface_lists_what_the_catalog_offers() {
        let err = endpoints(&center("RegionOne", Interface::Internal), &catalog())
            .expect_err("no internal image endpoint");
        match &err {
            Error::Catalog {
                service, offered, ..
            } => {
                assert_eq!(*service, Service::Image);
                assert_eq!(offered, "RegionOne/public, Two/public");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.code(), "catalog");
        assert!(
            err.to_string()
                .contains("region `RegionOne` and interface `internal`")
        );
    }

    #[test]
    fn a_service_absent_from_the_catalog_is_named() {
        let mut cat = catalog();
        cat.retain(|e| e.kind != "network");
        match endpoints(&center("RegionOne", Interface::Public), &cat) {
            Err(Error::MissingService { service }) => assert_eq!(service, Service::Network),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_token_never_prints_its_value() {
        let token = Token {
            value: "gAAAAABsecret-token".into(),
            expires_at: Utc::now(),
            user_id: "u".into(),
            project_id: "p".into(),
            endpoints: endpoints(&center("RegionOne", Interface::Public), &catalog())
                .expect("endpoints"),
        };
        let debug = format!("{token:?}");
        assert!(!debug.contains("secret-token"), "{debug}");
        assert!(debug.contains("project_id"));
    }

    #[test]
    fn the_login_body_names_user_project_and_domains() {
        let c = Center {
            username: " vdi-user ".into(),
            user_domain: "vdi".into(),
            project: "vdi-project".into(),
            project_domain: "vdi".into(),
            password: " pw ".into(),
            ..Center::default()
        };
        let body = auth_body(&c, true);
        let user = &body["auth"]["identity"]["password"]["user"];
        assert_eq!(user["name"], "vdi-user");
        assert_eq!(user["domain"]["name"], "vdi");
        assert_eq!(user["password"], " pw ", "passwords are sent as typed");
        assert_eq!(body["auth"]["scope"]["project"]["name"], "vdi-project");
        assert_eq!(body["auth"]["scope"]["project"]["domain"]["name"], "vdi");
        assert!(auth_body(&c, false)["auth"].get("scope").is_none());
    }
}
