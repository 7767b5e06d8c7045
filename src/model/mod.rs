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
