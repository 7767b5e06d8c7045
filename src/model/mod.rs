//! Plain domain types and the store collections they live in, one submodule per concept.
//!
//! Each type says which tree holds it (`store::Record`); the store decides how it is encoded.
//! Nothing here does I/O: validation, parsing (CSV, CIDR) and pure evaluation (pool rules,
//! location matching) live next to the types they concern.

pub mod alert;
mod appliance;
pub mod center;
pub mod desktop;
pub mod directory;
pub mod dn;
pub mod gateway;
pub mod history;
pub mod location;
pub mod plan;
pub mod policy;
pub mod pool;
pub mod provisioning;
pub mod role;
pub mod stats;
pub mod timer;

pub use appliance::*;

use serde::{Deserialize, Serialize};

/// The display protocols a desktop can be reached with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Rdp,
    Vnc,
    Spice,
    Ssh,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [Protocol::Rdp, Protocol::Vnc, Protocol::Spice, Protocol::Ssh];

    /// The port a desktop listens on when none is given.
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Rdp => 3389,
            Protocol::Vnc => 5900,
            Protocol::Spice => 5900,
            Protocol::Ssh => 22,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Rdp => "rdp",
            Protocol::Vnc => "vnc",
            Protocol::Spice => "spice",
            Protocol::Ssh => "ssh",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rdp" => Ok(Protocol::Rdp),
            "vnc" => Ok(Protocol::Vnc),
            "spice" => Ok(Protocol::Spice),
            "ssh" => Ok(Protocol::Ssh),
            other => Err(format!(
                "`{other}` is not a protocol (rdp, vnc, spice or ssh)"
            )),
        }
    }
}

/// One refused field of a form or API body: which field, and a sentence saying what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A new random id for a stored object (short, URL-safe).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Checks a pasted CA certificate (PEM, one or more certificates) that a client will trust:
/// for directories and clouds alike.
pub(crate) fn check_ca_pem(pem: &str) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA certificate is not valid PEM ({e})"))?;
    if certs.is_empty() {
        return Err(
            "no certificate found: paste the CA certificate including its -----BEGIN \
             CERTIFICATE----- and -----END CERTIFICATE----- lines"
                .to_string(),
        );
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| format!("a pasted certificate cannot be read ({e})"))?;
    }
    Ok(())
}

/// A new secret token starting with `prefix`, and its hash: the token is for the
/// administrator's eyes once, the hash (see [`gateway::hash_token`]) for the store.
pub fn new_token(prefix: &str) -> (String, String) {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = gateway::hash_token(&token);
    (token, hash)
}
