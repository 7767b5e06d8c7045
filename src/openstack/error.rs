//! The errors of the OpenStack client: one variant per thing that can fail, each a sentence
//! saying what failed and what to do, with the cloud's own message where it sent one.
//!
//! Owns [`Error`], its stable [`Error::code`], and reading a cloud's error body
//! ([`cloud_message`]). It never decides what an error means for the desktops (the caller
//! does).

use std::fmt;

use crate::model::FieldError;

/// The OpenStack services Gatehouse talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Identity,
    Compute,
    Image,
    Network,
    Volume,
}

impl Service {
    /// The service type in Keystone's catalog.
    pub fn catalog_type(self) -> &'static str {
        match self {
            Service::Identity => "identity",
            Service::Compute => "compute",
            Service::Image => "image",
            Service::Network => "network",
            Service::Volume => "volumev3",
        }
    }

    /// The name administrators know it by.
    pub fn label(self) -> &'static str {
        match self {
            Service::Identity => "Keystone (identity)",
            Service::Compute => "Nova (compute)",
            Service::Image => "Glance (image)",
            Service::Network => "Neutron (network)",
            Service::Volume => "Cinder (volumev3)",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The center's settings (or a create request) were refused before anything was sent.
    #[error("not valid: {}", join(.0))]
    Invalid(Vec<FieldError>),
    /// The Keystone address is malformed, or what answers there is not Keystone v3.
    #[error("the Keystone address `{url}` {reason}")]
    BadUrl { url: String, reason: String },
    /// No connection: refused, no route, or the host name does not resolve.
    #[error("{service} at {url} cannot be reached: {detail}")]
    Unreachable {
        service: Service,
        url: String,
        detail: String,
    },
    /// Connected, but no complete answer in time.
    #[error("{service} at {url} did not answer within {secs} s")]
    Timeout {
        service: Service,
        url: String,
        secs: u64,
    },
    /// The TLS handshake failed, usually because the certificate is not trusted.
    #[error(
        "the certificate of {url} is not trusted ({detail}): paste the cloud's CA certificate \
         in the center's settings, or tick \"do not verify\" (insecure)"
    )]
    Tls { url: String, detail: String },
    /// Keystone refused the user name or password (or the user's domain).
    #[error(
        "Keystone refused user `{user}` of domain `{domain}`: check the user name, its domain \
         and the password ({message})"
    )]
    Credentials {
        user: String,
        domain: String,
        message: String,
    },
    /// The user logs in, but cannot work in the project: the project or its domain does not
    /// exist, or the user has no role on it.
    #[error(
        "user `{user}` logs in but cannot work in project `{project}` of domain `{domain}`: the \
         project or domain does not exist, or the user has no role on it ({message}){}",
        available_hint(.available)
    )]
    Scope {
        user: String,
        project: String,
        domain: String,
        message: String,
        /// The projects the user can work in (`domain/project`), when Keystone lists them.
        available: Vec<String>,
    },
    /// The service is in the catalog, but not for the center's region and interface.
    #[error(
        "the catalog has no {service} endpoint for region `{region}` and interface \
         `{interface}`: check the center's region and interface (the catalog offers: {offered})"
    )]
    Catalog {
        service: Service,
        region: String,
        interface: String,
        offered: String,
    },
    /// The service is not in the catalog at all.
    #[error(
        "the cloud's catalog has no {service} service for this project: Gatehouse needs it \
         (ask the cloud's administrators)"
    )]
    MissingService { service: Service },
    /// The cloud answered with an error; `message` is the cloud's own.
    #[error("{service} refused the request (HTTP {status}): {message}")]
    Cloud {
        service: Service,
        status: u16,
        message: String,
    },
    /// The cloud is too old for what Gatehouse asks (Nova's microversion).
    #[error("{service} does not support what Gatehouse needs: {message}")]
    Unsupported { service: Service, message: String },
    /// An answer Gatehouse cannot read.
    #[error("{service} answered something Gatehouse cannot read: {detail}")]
    Malformed { service: Service, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stable, lowercase code for the API and the console.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::BadUrl { .. } => "bad_url",
            Error::Unreachable { .. } => "unreachable",
            Error::Timeout { .. } => "timeout",
            Error::Tls { .. } => "tls",
            Error::Credentials { .. } => "credentials",
            Error::Scope { .. } => "scope",
            Error::Catalog { .. } => "catalog",
            Error::MissingService { .. } => "missing_service",
            Error::Cloud { .. } => "cloud",
            Error::Unsupported { .. } => "unsupported",
            Error::Malformed { .. } => "malformed",
        }
    }

    /// The cloud said the object does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Cloud { status: 404, .. })
    }

    /// Worth trying again later without changing anything (the cloud or the network had a
    /// moment): unreachable, timeouts, HTTP 5xx and 429.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout { .. } => true,
            Error::Cloud { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn available_hint(available: &[String]) -> String {
    if available.is_empty() {
        String::new()
    } else {
        format!("; the user can work in: {}", available.join(", "))
    }
}

/// The message in an OpenStack error body, in any of the services' shapes:
/// Keystone's `{"error":{"message":…}}`, Nova's and Cinder's `{"badRequest":{"message":…}}`
/// (any key), Neutron's `{"NeutronError":{"message":…}}`, Placement's
/// `{"errors":[{"detail":…}]}`, a bare `{"message":…}`, or the text of an HTML or plain page
/// (Glance). Cut to 500 characters; `None` for an empty body.
pub fn cloud_message(body: &str) -> Option<String> {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| json_message(&v));
    let text = match from_json {
        Some(m) => m,
        None => page_text(body),
    };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return None;
    }
    Some(if text.chars().count() > 500 {
        let cut: String = text.chars().take(500).collect();
        format!("{cut}…")
    } else {
        text
    })
}

fn json_message(v: &serde_json::Value) -> Option<String> {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string).filter(|s| !s.is_empty());
    if let Some(m) = text(&v["message"]) {
        return Some(m);
    }
    if let Some(first) = v["errors"].as_array().and_then(|a| a.first()) {
        return text(&first["detail"]).or_else(|| text(&first["title"]));
    }
    let object = v.as_object()?;
    // `{"itemNotFound": {"message": …, "code": 404}}` and the like: one key holding the error.
    for inner in object.values() {
        if let Some(m) = text(&inner["message"]) {
            let detail = text(&inner["detail"]).filter(|d| *d != m);
            return Some(match detail {
                Some(d) => format!("{m} ({d})"),
                None => m,
            });
        }
    }
    text(&v["title"]).or_else(|| text(&v["description"]))
}

/// The visible text of an HTML page (tags dropped), or the body as it is.
fn page_text(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut in_tag = false;
    let mut in_title = false;
    let mut tag = String::new();
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                tag.clear();
            }
            '>' if in_tag => {
                in_tag = false;
                let name = tag.trim().to_ascii_lowercase();
                // The <title> repeats the <h1>: skip it.
                if name.starts_with("title") {
                    in_title = true;
                } else if name.starts_with("/title") {
                    in_title = false;
                }
                out.push(' ');
            }
            _ if in_tag => tag.push(c),
            _ if in_title => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_out_of_every_service_shape() {
        for (body, want) in [
            (
                r#"{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}"#,
                "The request you have made requires authentication.",
            ),
            (
                r#"{"badRequest":{"code":400,"message":"Invalid flavorRef provided."}}"#,
                "Invalid flavorRef provided.",
            ),
            (
                r#"{"itemNotFound":{"code":404,"message":"Instance x could not be found."}}"#,
                "Instance x could not be found.",
            ),
            (
                r#"{"NeutronError":{"type":"NetworkNotFound","message":"Network n could not be found.","detail":""}}"#,
                "Network n could not be found.",
            ),
            (
                r#"{"errors":[{"status":404,"title":"Not Found","detail":"No resource provider."}]}"#,
                "No resource provider.",
            ),
            (r#"{"message":"plain"}"#, "plain"),
            (
                "<html>\n <head>\n  <title>404 Not Found</title>\n </head>\n <body>\n  <h1>404 Not Found</h1>\n  The resource could not be found.<br /><br />\n\n\n\n </body>\n</html>",
                "404 Not Found The resource could not be found.",
            ),
            ("  just text\n", "just text"),
        ] {
            assert_eq!(cloud_message(body).as_deref(), Some(want), "{body}");
        }
        assert_eq!(cloud_message("  "), None);
        let long = "x".repeat(600);
        assert_eq!(
            cloud_message(&long).expect("text").chars().count(),
            501,
            "cut to 500 and an ellipsis"
        );
    }

    #[test]
    fn errors_read_as_sentences_with_codes() {
        let e = Error::Scope {
            user: "u".into(),
            project: "p".into(),
            domain: "d".into(),
            message: "no access".into(),
            available: vec!["d/q".into()],
        };
        assert_eq!(e.code(), "scope");
        let text = e.to_string();
        assert!(text.contains("project `p` of domain `d`"), "{text}");
        assert!(text.contains("the user can work in: d/q"), "{text}");

        let e = Error::Cloud {
            service: Service::Compute,
            status: 404,
            message: "Instance x could not be found.".into(),
        };
        assert!(e.is_not_found());
        assert!(!e.is_transient());
        assert_eq!(
            e.to_string(),
            "Nova (compute) refused the request (HTTP 404): Instance x could not be found."
        );
        let e = Error::Tls {
            url: "https://c".into(),
            detail: "unknown issuer".into(),
        };
        assert!(e.to_string().contains("paste the cloud's CA certificate"));
        assert!(e.to_string().contains("do not verify"));
    }
}
