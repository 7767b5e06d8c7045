//! Centers: the OpenStack clouds Gatehouse inventories desktops from and creates them in.
//!
//! Owns the [`Center`] record (how to reach and log in to one cloud's Keystone v3, which
//! region and endpoint interface to use, how its certificate is checked, how often it is
//! inventoried) with the status fields the inventory job fills in, its validation and its
//! warnings. The hand-entered desktops' center is not a record: it is the fixed id
//! [`STATIC_CENTER`](super::desktop::STATIC_CENTER).
//!
//! Pure: no network. Talking to the cloud is `openstack`'s job; storing the record is the
//! store's (tree `center_by_id`, keyed by `id`). The password is kept here in the clear because
//! Gatehouse must replay it to Keystone; it never appears in `Debug` output, and
//! [`Center::redact`] clears it (with the CA kept) for anything shown or exported.

use std::fmt;

use chrono::{DateTime, Utc};
use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::desktop::STATIC_CENTER;
use super::{FieldError, Protocol};
use crate::store::Record;

/// The region a center uses when none is given (Keystone's bootstrap default).
pub const DEFAULT_REGION: &str = "RegionOne";
/// The domain of projects and users when none is given (Keystone's built-in domain).
pub const DEFAULT_DOMAIN: &str = "Default";
/// How often the inventory is refreshed when nothing else is set, in seconds.
pub const DEFAULT_REFRESH_SECS: u32 = 300;
/// The allowed refresh interval, in seconds (30 s to one day).
pub const REFRESH_RANGE: (u32, u32) = (30, 86_400);
/// The longest center name.
pub const MAX_NAME_LEN: usize = 100;
/// The longest region, domain, project or user name Keystone accepts.
pub const MAX_KEYSTONE_NAME_LEN: usize = 255;

/// Which of the catalog's endpoints Gatehouse calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    /// The endpoints meant for users of the cloud.
    #[default]
    Public,
    /// The endpoints on the cloud's internal network (when Gatehouse runs inside it).
    Internal,
}

impl Interface {
    pub const ALL: [Interface; 2] = [Interface::Public, Interface::Internal];

    /// The name Keystone's catalog uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
        }
    }
}

impl std::str::FromStr for Interface {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "public" | "publicurl" => Ok(Interface::Public),
            "internal" | "internalurl" => Ok(Interface::Internal),
            other => Err(format!(
                "`{other}` is not an endpoint interface (public or internal)"
            )),
        }
    }
}

/// One OpenStack cloud (one project in it), as the administrator configured it, and how its
/// last inventory went.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Center {
    pub id: String,
    /// The name shown in the console and in desktop lists.
    pub name: String,
    /// Keystone's v3 address, `https://cloud.example.com:5000/v3`. An address without the
    /// `/v3` at the end gets it added (see [`Center::keystone_url`]).
    pub auth_url: String,
    pub region: String,
    /// The domain the project is in (by name): `Default` for clouds with one domain.
    pub project_domain: String,
    /// The project (by name) desktops live in and are created in.
    pub project: String,
    /// The domain the user is in (by name).
    pub user_domain: String,
    pub username: String,
    /// Secret: never shown, logged or exported; see [`Center::redact`].
    pub password: String,
    pub interface: Interface,
    /// The CA (or CAs) that signed the cloud's certificates, in PEM. `None` trusts the
    /// system's CA bundle.
    pub ca_pem: Option<String>,
    /// Do not check the cloud's certificates at all (shown as a warning).
    pub insecure: bool,
    /// Seconds between two inventories.
    pub refresh_interval_secs: u32,
    /// How the desktops this center finds or creates are reached (RDP unless set); a
    /// desktop's own protocol, once edited, stays.
    pub protocol: Protocol,
    /// When the last inventory (or connection test) succeeded.
    pub last_ok: Option<DateTime<Utc>>,
    /// What went wrong the last time, cleared by a success.
    pub last_error: Option<String>,
    /// Since when every inventory has failed; cleared by a success.
    pub failing_since: Option<DateTime<Utc>>,
}

impl Record for Center {
    const TREE: &'static str = "center_by_id";
}

impl Default for Center {
    fn default() -> Self {
        Center {
            id: String::new(),
            name: String::new(),
            auth_url: String::new(),
            region: DEFAULT_REGION.to_string(),
            project_domain: DEFAULT_DOMAIN.to_string(),
            project: String::new(),
            user_domain: DEFAULT_DOMAIN.to_string(),
            username: String::new(),
            password: String::new(),
            interface: Interface::Public,
            ca_pem: None,
            insecure: false,
            refresh_interval_secs: DEFAULT_REFRESH_SECS,
            protocol: Protocol::Rdp,
            last_ok: None,
            last_error: None,
            failing_since: None,
        }
    }
}

impl fmt::Debug for Center {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Center")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("auth_url", &self.auth_url)
            .field("region", &self.region)
            .field("project_domain", &self.project_domain)
            .field("project", &self.project)
            .field("user_domain", &self.user_domain)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("interface", &self.interface)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("insecure", &self.insecure)
            .field("refresh_interval_secs", &self.refresh_interval_secs)
            .field("last_ok", &self.last_ok)
            .field("last_error", &self.last_error)
            .field("failing_since", &self.failing_since)
            .finish()
    }
}

impl Center {
    /// Clears the password, for a copy that is shown, returned by the API or exported.
    pub fn redact(&mut self) {
        self.password.clear();
    }

    /// A copy without the password.
    pub fn redacted(&self) -> Center {
        let mut copy = self.clone();
        copy.redact();
        copy
    }

    /// Keystone's v3 base address: the configured one without a trailing `/`, with `/v3`
    /// added when it does not end with it. The reason is a sentence for the administrator.
    pub fn keystone_url(&self) -> Result<Url, String> {
        keystone_url(&self.auth_url)
    }

    /// Notes a successful inventory or connection test at `now`.
    pub fn record_success(&mut self, now: DateTime<Utc>) {
        self.last_ok = Some(now);
        self.last_error = None;
        self.failing_since = None;
    }

    /// Notes a failed inventory at `now`: `failing_since` keeps the first failure of a run.
    pub fn record_failure(&mut self, now: DateTime<Utc>, error: impl Into<String>) {
        self.last_error = Some(error.into());
        if self.failing_since.is_none() {
            self.failing_since = Some(now);
        }
    }

    /// Every problem with this configuration, one sentence each; empty when it can be saved.
    /// `others` are the stored centers (this one may be among them): names are unique, any
    /// case.
    pub fn validate(&self, others: &[Center]) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, reason: String| errors.push(FieldError::new(field, reason));

        if self.id.trim().is_empty() {
            err("id", "a center needs an id".into());
        } else if self.id.trim().eq_ignore_ascii_case(STATIC_CENTER) {
            err(
                "id",
                format!("`{STATIC_CENTER}` is the id of hand-entered desktops: choose another"),
            );
        }

        let name = self.name.trim();
        if name.is_empty() {
            err(
                "name",
                "give the center a name, for example \"Main cloud\"".into(),
            );
        } else if name.chars().count() > MAX_NAME_LEN {
            err(
                "name",
                format!("the name is longer than {MAX_NAME_LEN} characters"),
            );
        } else if name.chars().any(char::is_control) {
            err("name", "the name contains a control character".into());
        } else if let Some(other) = others
            .iter()
            .find(|c| c.id != self.id && c.name.trim().to_lowercase() == name.to_lowercase())
        {
            err(
                "name",
                format!("a center named `{}` already exists", other.name.trim()),
            );
        }

        if let Err(reason) = self.keystone_url() {
            err("auth_url", reason);
        }

        for (field, value, what, example) in [
            ("region", &self.region, "region", DEFAULT_REGION),
            (
                "project_domain",
                &self.project_domain,
                "project's domain",
                DEFAULT_DOMAIN,
            ),
            ("project", &self.project, "project", "vdi"),
            (
                "user_domain",
                &self.user_domain,
                "user's domain",
                DEFAULT_DOMAIN,
            ),
            ("username", &self.username, "user name", "gatehouse"),
        ] {
            if let Some(reason) = keystone_name_problem(value, what, example) {
                err(field, reason);
            }
        }
        if self.password.is_empty() {
            err(
                "password",
                "give the password of the OpenStack user Gatehouse logs in as".into(),
            );
        }

        if let Some(pem) = &self.ca_pem
            && !pem.trim().is_empty()
        {
            if self.insecure {
                err(
                    "insecure",
                    "a CA certificate is pasted and certificate checks are off: keep the CA \
                     and untick \"do not verify\", or remove the CA"
                        .into(),
                );
            }
            if let Err(reason) = super::check_ca_pem(pem) {
                err("ca_pem", reason);
            }
        }

        let (lo, hi) = REFRESH_RANGE;
        if !(lo..=hi).contains(&self.refresh_interval_secs) {
            err(
                "refresh_interval_secs",
                format!("the refresh interval must be between {lo} and {hi} seconds"),
            );
        }
        errors
    }

    /// Settings that work but weaken security, for the console to show next to the form.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let plain = self
            .keystone_url()
            .map(|u| u.scheme() == "http")
            .unwrap_or(false);
        if plain {
            warnings.push(
                "plain http: the OpenStack password and tokens cross the network readable; \
                 use the cloud's https address"
                    .to_string(),
            );
        } else if self.insecure {
            warnings.push(
                "certificate verification is off: anyone between Gatehouse and the cloud can \
                 pose as it and read the OpenStack password; paste the cloud's CA certificate \
                 instead"
                    .to_string(),
            );
        }
        warnings
    }
}

/// Checks and normalises a Keystone address (see [`Center::keystone_url`]).
pub fn keystone_url(text: &str) -> Result<Url, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(
            "give Keystone's address, for example https://cloud.example.com:5000/v3".to_string(),
        );
    }
    let url = Url::parse(text).map_err(|e| {
        format!(
            "`{text}` is not an address ({e}); write it like \
             https://cloud.example.com:5000/v3"
        )
    })?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(format!("`{text}` must start with https:// (or http://)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{text}` holds a user name: give the user in the user name field"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{text}`: give only the scheme, host, port and path (no ? or #)"
        ));
    }
    let path = url.path().trim_end_matches('/');
    if path.ends_with("/v2.0") || path.ends_with("/v2") {
        return Err(format!(
            "`{text}` is a Keystone v2 address; Gatehouse speaks Keystone v3: end it with /v3"
        ));
    }
    let path = if path.ends_with("/v3") {
        path.to_string()
    } else {
        format!("{path}/v3")
    };
    let mut url = url;
    url.set_path(&path);
    Ok(url)
}

fn keystone_name_problem(value: &str, what: &str, example: &str) -> Option<String> {
    let v = value.trim();
    if v.is_empty() {
        return Some(format!("give the {what}, for example {example}"));
    }
    if v.chars().count() > MAX_KEYSTONE_NAME_LEN {
        return Some(format!(
            "the {what} is longer than {MAX_KEYSTONE_NAME_LEN} characters"
        ));
    }
    if v.chars().any(char::is_control) {
        return Some(format!("the {what} contains a control character"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn center() -> Center {
        Center {
            id: "c1".into(),
            name: "Main cloud".into(),
            auth_url: "https://cloud.example.com:5000/v3".into(),
            project_domain: "vdi".into(),
            project: "vdi-project".into(),
            user_domain: "vdi".into(),
            username: "vdi-user".into(),
            password: "s3cret-cloud".into(),
            ..Center::default()
        }
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_complete_center_is_valid_with_defaults() {
        let c = center();
        assert!(c.validate(&[]).is_empty(), "{:?}", c.validate(&[]));
        assert!(c.warnings().is_empty());
        assert_eq!(c.region, "RegionOne");
        assert_eq!(c.interface, Interface::Public);
        assert_eq!(c.refresh_interval_secs, 300);
        // Saving it again among the stored ones (itself included) is fine.
        assert!(c.validate(std::slice::from_ref(&c)).is_empty());
    }

    #[test]
    fn each_missing_field_is_named_with_what_to_do() {
        let c = Center {
            id: "c1".into(),
            region: " ".into(),
            project_domain: String::new(),
            user_domain: String::new(),
            ..Center::default()
        };
        let errors = c.validate(&[]);
        assert_eq!(
            fields(&errors),
            [
                "name",
                "auth_url",
                "region",
                "project_domain",
                "project",
                "user_domain",
                "username",
                "password"
            ]
        );
        assert!(
            errors[1]
                .reason
                .contains("https://cloud.example.com:5000/v3")
        );
        assert!(errors[2].reason.contains("for example RegionOne"));
    }

    #[test]
    fn names_are_unique_in_any_case_and_static_is_reserved() {
        let mut other = center();
        other.id = "c2".into();
        other.name = "MAIN CLOUD".into();
        let errors = center().validate(&[other]);
        assert_eq!(fields(&errors), ["name"]);
        assert!(errors[0].reason.contains("already exists"));

        let mut c = center();
        c.id = "static".into();
        assert_eq!(fields(&c.validate(&[])), ["id"]);
    }

    #[test]
    fn keystone_addresses_are_checked_and_get_v3() {
        for (given, want) in [
            (
                "https://cloud.example.com:5000/v3",
                "https://cloud.example.com:5000/v3",
            ),
            (
                "https://cloud.example.com:5000/v3/",
                "https://cloud.example.com:5000/v3",
            ),
            (
                " https://cloud.example.com:5000 ",
                "https://cloud.example.com:5000/v3",
            ),
            (
                "https://cloud.example.com/identity",
                "https://cloud.example.com/identity/v3",
            ),
            ("http://127.0.0.1:5000/v3", "http://127.0.0.1:5000/v3"),
        ] {
            assert_eq!(keystone_url(given).expect(given).as_str(), want);
        }
        for (bad, why) in [
            ("", "give Keystone's address"),
            ("cloud.example.com:5000", "must start with https://"),
            ("ftp://cloud.example.com", "must start with https://"),
            ("https://", "not an address"),
            ("https://u:p@cloud.example.com/v3", "user name"),
            ("https://cloud.example.com/v3?x=1", "no ? or #"),
            ("https://cloud.example.com:5000/v2.0", "Keystone v2"),
            ("https://cloud.example.com:99999/v3", "not an address"),
        ] {
            let reason = keystone_url(bad).expect_err(bad);
            assert!(reason.contains(why), "{bad}: {reason}");
        }
    }

    #[test]
    fn the_ca_must_be_a_certificate_and_not_combined_with_insecure() {
        let mut c = center();
        c.ca_pem = Some("not a pem".into());
        let errors = c.validate(&[]);
        assert_eq!(fields(&errors), ["ca_pem"]);
        assert!(errors[0].reason.contains("-----BEGIN"));

        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_string()])
            .expect("certificate");
        c.ca_pem = Some(ca.cert.pem());
        assert!(c.validate(&[]).is_empty());
        c.insecure = true;
        assert_eq!(fields(&c.validate(&[])), ["insecure"]);

        // An empty CA field counts as none.
        c.ca_pem = Some("  ".into());
        assert!(c.validate(&[]).is_empty());
        assert_eq!(c.warnings().len(), 1);
        assert!(c.warnings()[0].contains("verification is off"));
    }

    #[test]
    fn plain_http_is_a_warning_and_refresh_is_bounded() {
        let mut c = center();
        c.auth_url = "http://10.0.0.1:5000/v3".into();
        assert!(c.validate(&[]).is_empty());
        assert!(c.warnings()[0].contains("plain http"));
        for bad in [0, 29, 86_401] {
            c.refresh_interval_secs = bad;
            assert_eq!(fields(&c.validate(&[])), ["refresh_interval_secs"], "{bad}");
        }
    }

    #[test]
    fn the_password_never_shows_in_debug_and_redact_clears_it() {
        let c = center();
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret-cloud"), "{debug}");
        assert!(debug.contains("<redacted>"));
        let shown = c.redacted();
        assert!(shown.password.is_empty());
        assert_eq!(c.password, "s3cret-cloud");
        // The store keeps it.
        let json = serde_json::to_string(&c).expect("encodes");
        let back: Center = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, c);
    }

    #[test]
    fn status_fields_track_a_run_of_failures() {
        let mut c = center();
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let t1 = t0 + chrono::Duration::minutes(5);
        c.record_failure(t0, "unreachable");
        c.record_failure(t1, "still unreachable");
        assert_eq!(c.failing_since, Some(t0));
        assert_eq!(c.last_error.as_deref(), Some("still unreachable"));
        c.record_success(t1);
        assert_eq!(c.last_ok, Some(t1));
        assert_eq!(c.failing_since, None);
        assert_eq!(c.last_error, None);
    }

    #[test]
    fn old_or_partial_records_get_defaults() {
        let c: Center = serde_json::from_str(r#"{"id":"c","name":"n"}"#).expect("decodes");
        assert_eq!(c.region, DEFAULT_REGION);
        assert_eq!(c.user_domain, DEFAULT_DOMAIN);
        assert_eq!(c.refresh_interval_secs, DEFAULT_REFRESH_SECS);
        assert_eq!(
            "Internal".parse::<Interface>().expect("parses"),
            Interface::Internal
        );
        assert!("admin".parse::<Interface>().is_err());
    }
}
