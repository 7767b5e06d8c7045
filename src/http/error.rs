//! The one mapping from errors to HTTP responses: each variant has a status and a stable,
//! lowercase error code, shown on the error page and in the JSON body of API answers
//! (`{"error": "code", "message": "…"}`).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};

use crate::admin::AdminError;
use crate::backup::BackupError;
use crate::broker::BrokerError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("Sign in first.")]
    NotSignedIn,
    #[error("Finish the first-run setup wizard first.")]
    SetupRequired,
    #[error("Change the one-time password first.")]
    MustChangePassword,
    #[error(
        "The form has expired or did not come from this console. Reload the page and try again."
    )]
    Csrf,
    #[error("{0}")]
    BadRequest(String),
    #[error("Too many failed sign-ins. Try again in {minutes} minute(s).")]
    Locked { minutes: u64 },
    #[error("There is no such page.")]
    NotFound,
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("The page could not be drawn: {0}")]
    Render(String),
    /// A refusal from the broker (client sign-in, offer, connect, release).
    #[error("{}", broker_message(.0))]
    Broker(#[from] BrokerError),
    /// A form or API body with fields that cannot be saved; nothing was saved.
    #[error("{summary}")]
    Invalid {
        summary: String,
        fields: Vec<crate::model::FieldError>,
    },
    /// The body is not JSON (or not the JSON shape expected).
    #[error("The body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The change cannot be made as things stand (in use, built in, taken).
    #[error("{0}")]
    Conflict(String),
    /// An API object that does not exist.
    #[error("There is no {kind} `{id}`.")]
    NoSuch { kind: &'static str, id: String },
    /// An API call without a live administrator's token.
    #[error(
        "Send an administrator's token: `Authorization: Bearer <token>`, from POST /api/v1/tokens."
    )]
    TokenRequired,
    /// An agent call without the token of a desktop (or with another desktop's).
    #[error(
        "Send this desktop's agent token: `Authorization: Bearer <token>`, from Resources > Desktops > the desktop > Issue agent token (shown once)."
    )]
    AgentTokenRequired,
    /// A gateway call without the token of a registered gateway.
    #[error(
        "Send this gateway's token: `Authorization: Bearer <token>`, from Setup > Gateways (shown once when the gateway is created or given a new token)."
    )]
    GatewayTokenRequired,
    /// A directory user's console session or API token ended by the check against the
    /// directory; the reason says why.
    #[error("Your console session has ended: {0}. Sign in again.")]
    SessionEnded(String),
    /// `POST /api/v1/tokens` with a wrong user name or password.
    #[error("Wrong user name or password.")]
    SignInFailed,
    /// The signed-in user's role does not reach this console area at the level needed.
    #[error("{0}")]
    Forbidden(String),
    /// The licence does not allow this (one more gateway, …); nothing was changed.
    #[error("{0}")]
    LicenceLimit(String),
    /// An authentication server did not answer as asked.
    #[error("{0}")]
    Directory(#[from] crate::auth::DirectoryError),
    /// A center's cloud did not answer as asked (the cloud's own message is in it).
    #[error("{0}")]
    Cloud(#[from] crate::openstack::Error),
}

/// What a user reads for a broker refusal. An unknown user reads exactly what a wrong password
/// reads, so that user names cannot be probed.
/// What the appliance's insides said (a directory's host and TLS error, a gateway's address, the
/// store's error) stays in the log: someone not yet signed in reads only what to do.
pub(super) fn broker_message(e: &BrokerError) -> String {
    match e {
        BrokerError::UnknownUser(_) => BrokerError::WrongPassword.to_string(),
        BrokerError::DirectoryUnreachable(_) => "The directory cannot be reached right now. Try again in a moment or tell your administrator.".into(),
        BrokerError::Gateway(_) => "The gateway cannot open a connection for you right now. Try again or tell your administrator.".into(),
        BrokerError::Store(_) => "The server could not answer. Try again, or tell your administrator.".into(),
        e => e.to_string(),
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        HttpError::Admin(AdminError::Store(e))
    }
}

impl HttpError {
    /// The stable code scripts and the error page show.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::NotSignedIn => "not_signed_in",
            HttpError::SetupRequired => "setup_required",
            HttpError::MustChangePassword => "password_change_required",
            HttpError::Csrf => "csrf_failed",
            HttpError::BadRequest(_) => "bad_request",
            HttpError::Locked { .. } => "locked_out",
            HttpError::NotFound => "not_found",
            HttpError::Render(_) => "render_failed",
            HttpError::Invalid { .. } => "invalid",
            HttpError::MalformedJson(_) => "malformed_json",
            HttpError::Conflict(_) => "conflict",
            HttpError::NoSuch { .. } => "not_found",
            HttpError::TokenRequired => "token_required",
            HttpError::SessionEnded(_) => "session_ended",
            HttpError::GatewayTokenRequired => "gateway_token_required",
            HttpError::AgentTokenRequired => "agent_token_required",
            HttpError::SignInFailed => "sign_in_failed",
            HttpError::Forbidden(_) => "forbidden",
            HttpError::LicenceLimit(_) => "licence_limit",
            HttpError::Directory(e) => e.code(),
            HttpError::Cloud(_) => "cloud_error",
            HttpError::Admin(e) => match e {
                AdminError::Store(_) => "store_error",
                AdminError::Licence(_) => "licence_refused",
                AdminError::Tls(_) => "certificate_refused",
                AdminError::Backup(BackupError::WrongPassphrase) => "wrong_passphrase",
                AdminError::Backup(BackupError::PassphraseRequired) => "passphrase_required",
                AdminError::Backup(_) => "backup_refused",
                AdminError::Auth(_) => "internal_error",
                AdminError::WeakPassword(_) => "weak_password",
                AdminError::WrongPassword => "wrong_password",
                AdminError::AgreementRequired => "agreement_required",
                AdminError::NoLicenceKey => "licence_key_missing",
                AdminError::WizardOrder(_) => "wizard_order",
                AdminError::NoSuchAccount(_) => "no_such_account",
                AdminError::Schedule(crate::scheduler::ScheduleError::UnknownJob(_)) => "not_found",
                AdminError::Schedule(_) => "bad_schedule",
            },
            HttpError::Broker(e) => match e {
                // The same code as a wrong password: names cannot be probed.
                BrokerError::WrongPassword | BrokerError::UnknownUser(_) => "wrong_password",
                BrokerError::EmptyPassword => "empty_password",
                BrokerError::Disabled => "account_disabled",
                BrokerError::PasswordExpired => "password_expired",
                BrokerError::DirectoryUnreachable(_) => "directory_unreachable",
                BrokerError::NoServers => "no_directory",
                BrokerError::NoAccess => "no_access",
                BrokerError::NoDesktopAvailable { .. } => "no_desktop_available",
                BrokerError::NotOffered => "not_offered",
                BrokerError::NotYours => "not_yours",
                BrokerError::NoSuchDesktop(_) => "not_found",
                BrokerError::ProtocolNotAllowed(_) => "protocol_not_allowed",
                BrokerError::Forbidden => "forbidden",
                BrokerError::Missing { .. } => "configuration_missing",
                BrokerError::Gateway(_) => "gateway_unavailable",
                BrokerError::LicenceLimit(_) => "licence_limit",
                BrokerError::Store(_) => "store_error",
            },
        }
    }

    fn redirect_to(&self) -> Option<&'static str> {
        match self {
            // A console page goes back to the sign-in form; the API answers 401.
            HttpError::NotSignedIn | HttpError::SessionEnded(_) => Some("/admin/login"),
            HttpError::SetupRequired => Some("/admin/wizard"),
            HttpError::MustChangePassword => Some("/admin/me"),
            _ => None,
        }
    }

    /// An answer for API clients: the same status and code, as JSON.
    /// The whole story, for the log: a broker error's inner detail, which the answer leaves out.
    fn detail(&self) -> String {
        match self {
            HttpError::Broker(e) => e.to_string(),
            e => e.to_string(),
        }
    }

    fn log_server_error(&self) {
        if self.status_code().is_server_error() {
            tracing::error!(code = self.code(), "{}", self.detail());
        }
    }

    pub fn json_response(&self) -> HttpResponse {
        self.log_server_error();
        let status = self.status_code();
        let mut builder = HttpResponse::build(status);
        if let Some(to) = self.redirect_to().filter(|_| status.is_redirection()) {
            builder.insert_header((header::LOCATION, to));
        }
        let mut body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        if let HttpError::Invalid { fields, .. } = self {
            body["fields"] = serde_json::json!(fields);
        }
        if let HttpError::Cloud(e) = self {
            // What failed: credentials, scope, tls, unreachable, … (see `openstack::Error`).
            body["cloud"] = serde_json::json!(e.code());
        }
        builder.json(body)
    }
}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        match self {
            HttpError::NotSignedIn | HttpError::SetupRequired | HttpError::MustChangePassword => {
                StatusCode::SEE_OTHER
            }
            HttpError::Csrf | HttpError::Forbidden(_) | HttpError::LicenceLimit(_) => {
                StatusCode::FORBIDDEN
            }
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::Locked { .. } => StatusCode::TOO_MANY_REQUESTS,
            HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HttpError::Invalid { .. } | HttpError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            HttpError::Conflict(_) => StatusCode::CONFLICT,
            HttpError::NoSuch { .. } => StatusCode::NOT_FOUND,
            HttpError::TokenRequired
            | HttpError::SessionEnded(_)
            | HttpError::GatewayTokenRequired
            | HttpError::AgentTokenRequired
            | HttpError::SignInFailed => StatusCode::UNAUTHORIZED,
            HttpError::Directory(_) | HttpError::Cloud(_) => StatusCode::BAD_GATEWAY,
            HttpError::Admin(e) => match e {
                AdminError::Store(StoreError::InUse { .. }) => StatusCode::SERVICE_UNAVAILABLE,
                AdminError::Store(_) | AdminError::Auth(_) => StatusCode::INTERNAL_SERVER_ERROR,
                AdminError::WrongPassword => StatusCode::UNAUTHORIZED,
                AdminError::WizardOrder(_) => StatusCode::CONFLICT,
                AdminError::NoSuchAccount(_)
                | AdminError::Schedule(crate::scheduler::ScheduleError::UnknownJob(_)) => {
                    StatusCode::NOT_FOUND
                }
                _ => StatusCode::BAD_REQUEST,
            },
            HttpError::Broker(e) => match e {
                BrokerError::WrongPassword
                | BrokerError::EmptyPassword
                | BrokerError::UnknownUser(_) => StatusCode::UNAUTHORIZED,
                BrokerError::Disabled
                | BrokerError::PasswordExpired
                | BrokerError::NoServers
                | BrokerError::NoAccess
                | BrokerError::NotOffered
                | BrokerError::Forbidden
                | BrokerError::LicenceLimit(_) => StatusCode::FORBIDDEN,
                BrokerError::NotYours | BrokerError::NoSuchDesktop(_) => StatusCode::NOT_FOUND,
                BrokerError::DirectoryUnreachable(_)
                | BrokerError::Gateway(_)
                | BrokerError::Store(StoreError::InUse { .. }) => StatusCode::SERVICE_UNAVAILABLE,
                BrokerError::NoDesktopAvailable { .. } | BrokerError::ProtocolNotAllowed(_) => {
                    StatusCode::CONFLICT
                }
                BrokerError::Missing { .. } | BrokerError::Store(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(to) = self.redirect_to() {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, to))
                .finish();
        }
        self.log_server_error();
        let message = escape(&self.to_string());
        HttpResponse::build(self.status_code())
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Gatehouse: \
                 {status}</title><link rel=\"stylesheet\" href=\"/assets/gatehouse.css\"></head>\
                 <body class=\"bare\"><main class=\"card narrow\"><h1>{status}</h1>\
                 <p class=\"error\" data-code=\"{code}\">{message}</p>\
                 <p><a href=\"/admin\">Back to the console</a></p></main></body></html>",
                status = self.status_code(),
                code = self.code(),
            ))
    }
}

/// The answer for a refused request: JSON for the API, the error page for the console.
pub fn refused(path: &str, error: &HttpError) -> HttpResponse {
    if path.starts_with("/api/") {
        error.json_response()
    } else {
        error.error_response()
    }
}

/// The JSON error for an API answer that actix made itself, without a handler's error (no
/// such path, a method the path does not take, a body over the limit): the same
/// `{"error", "message"}` shape as every other API error.
pub fn api_fallback(status: StatusCode, method: &actix_web::http::Method) -> HttpResponse {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (
            "no_such_path",
            "There is no such API path: /api/v1/openapi.json lists them.".to_string(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!("This path does not take {method}: /api/v1/openapi.json lists what it takes."),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "The body is larger than this call takes: send less.".to_string(),
        ),
        s if s.is_server_error() => (
            "internal_error",
            "The server could not answer: its log says why.".to_string(),
        ),
        _ => (
            "bad_request",
            format!(
                "The request was refused ({}).",
                status.canonical_reason().unwrap_or("bad request")
            ),
        ),
    };
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "error": code, "message": message }))
}

/// The answer the wizard gate gives: a redirect for pages, the same with a JSON body for APIs.
pub fn setup_required(path: &str) -> HttpResponse {
    if path.starts_with("/api/") {
        HttpError::SetupRequired.json_response()
    } else {
        HttpError::SetupRequired.error_response()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_session_is_a_401_for_the_api_and_the_sign_in_form_for_the_console() {
        let e = HttpError::SessionEnded("the account is disabled in the directory".into());
        let api = e.json_response();
        assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
        assert!(api.headers().get(header::LOCATION).is_none());
        let page = e.error_response();
        assert_eq!(page.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            page.headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok()),
            Some("/admin/login")
        );
        assert_eq!(e.code(), "session_ended");
        assert!(e.to_string().contains("disabled in the directory"), "{e}");
    }

    #[test]
    fn a_broker_s_inner_detail_stays_in_the_log() {
        let cases = [
            BrokerError::DirectoryUnreachable(
                "ldaps://10.1.2.3:636: invalid peer certificate".into(),
            ),
            BrokerError::Gateway("gw-internal.example:8443 refused".into()),
            BrokerError::Store(StoreError::Engine(
                "/var/lib/gatehouse/db: I/O error".into(),
            )),
        ];
        for e in cases {
            let inner = e.to_string();
            let e = HttpError::Broker(e);
            let shown = e.to_string();
            for secret in ["10.1.2.3", "gw-internal", "/var/lib"] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(shown.contains("Try again"), "{shown}");
            assert_eq!(e.detail(), inner, "the log has it all");
        }
    }
}
