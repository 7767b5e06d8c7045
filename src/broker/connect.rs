//! What a client needs to reach its desktop: connection files (`.rdp`, `.vv`), addresses
//! (`vnc://`, `ssh://`), and — when the protocol plan says so — a gateway ticket.
//!
//! A ticket is the broker's signed word that one session may reach one desktop address and
//! port until an expiry. The gateway checks it with the broker's public key only, so it is
//! never an open proxy. Text form: `GT1.<payload>.<signature>`, both parts base64url without
//! padding; the payload is JSON; the signature is ed25519 over `"gatehouse ticket v1\0"`
//! followed by the payload bytes. Tickets are secrets: never logged.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::model::Protocol;
use crate::model::plan::{PowerPlan, ProtocolSetting, ReleasePlan};

const TICKET_PREFIX: &str = "GT1.";
const TICKET_CONTEXT: &[u8] = b"gatehouse ticket v1\0";

/// A gateway ticket's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The broker session the tunnel belongs to (the gateway closes tunnels when it ends).
    pub session: String,
    pub user: String,
    pub host: String,
    pub port: u16,
    /// When set, only this client address may open tunnels with the ticket.
    pub client: Option<IpAddr>,
    /// Tunnels must open before this (unix seconds); open tunnels outlive it.
    pub expires: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("the ticket is malformed: {0}")]
    Malformed(String),
    #[error("the ticket's signature is not the broker's")]
    BadSignature,
    #[error("the ticket expired")]
    Expired,
}

impl Ticket {
    pub fn sign(&self, key: &SigningKey) -> String {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        let signature = key.sign(&[TICKET_CONTEXT, &payload].concat());
        format!(
            "{TICKET_PREFIX}{}.{}",
            B64.encode(&payload),
            B64.encode(signature.to_bytes())
        )
    }

    /// Checks signature and expiry; the gateway also checks the port range and client address.
    pub fn verify(
        text: &str,
        key: &VerifyingKey,
        now: DateTime<Utc>,
    ) -> Result<Ticket, TicketError> {
        let body = text
            .trim()
            .strip_prefix(TICKET_PREFIX)
            .ok_or_else(|| TicketError::Malformed("it does not start with GT1.".into()))?;
        let (payload_b64, sig_b64) = body
            .split_once('.')
            .ok_or_else(|| TicketError::Malformed("it has no signature part".into()))?;
        let payload = B64
            .decode(payload_b64)
            .map_err(|e| TicketError::Malformed(format!("payload: {e}")))?;
        let sig_bytes: [u8; 64] = B64
            .decode(sig_b64)
            .map_err(|e| TicketError::Malformed(format!("signature: {e}")))?
            .try_into()
            .map_err(|_| TicketError::Malformed("the signature is not 64 bytes".into()))?;
        key.verify_strict(
            &[TICKET_CONTEXT, &payload].concat(),
            &Signature::from_bytes(&sig_bytes),
        )
        .map_err(|_| TicketError::BadSignature)?;
        let ticket: Ticket =
            serde_json::from_slice(&payload).map_err(|e| TicketError::Malformed(e.to_string()))?;
        if now.timestamp() >= ticket.expires {
            return Err(TicketError::Expired);
        }
        Ok(ticket)
    }
}

/// Where the client connects when the plan sends it through the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayDetails {
    /// The gateway's WebSocket tunnel URL.
    pub url: String,
    pub ticket: String,
}

/// Everything a client needs for one desktop.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionParams {
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    /// A URI for clients that take one (`rdp://`, `spice://`, `vnc://`, `ssh://`).
    pub uri: String,
    /// The connection file a native client opens, and the name to save it under.
    pub file_name: Option<String>,
    pub file: Option<String>,
    pub command_line: String,
    pub gateway: Option<GatewayDetails>,
    /// The power and release plans that apply to this session (their timers run on the
    /// broker's side; clients show them, e.g. "released 30 minutes after you log out").
    pub plans: Option<SessionPlans>,
}

/// The plans of the policy entry a desktop was handed out under.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionPlans {
    pub power: PowerPlan,
    pub release: ReleasePlan,
}

/// Builds the parameters for a desktop at `host:port` from its protocol setting.
pub fn params(
    setting: &ProtocolSetting,
    host: &str,
    port: u16,
    user: &str,
    title: &str,
    gateway: Option<GatewayDetails>,
) -> ConnectionParams {
    let safe_title: String = title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let (uri, file_name, file) = match setting.protocol {
        Protocol::Rdp => (
            format!("rdp://full%20address=s:{bracketed}:{port}"),
            Some(format!("{safe_title}.rdp")),
            Some(rdp_file(&bracketed, port, user, &setting.file_lines)),
        ),
        Protocol::Spice => (
            format!("spice://{bracketed}:{port}"),
            Some(format!("{safe_title}.vv")),
            Some(vv_file(host, port, title, &setting.file_lines)),
        ),
        Protocol::Vnc => (format!("vnc://{bracketed}:{port}"), None, None),
        Protocol::Ssh => (format!("ssh://{user}@{bracketed}:{port}"), None, None),
    };
    ConnectionParams {
        protocol: setting.protocol,
        host: host.to_string(),
        port,
        uri,
        file_name,
        file,
        command_line: setting.command_line.clone(),
        gateway,
        plans: None,
    }
}

/// A `.rdp` file; plan lines come last so they override the defaults (clients read the last).
fn rdp_file(host: &str, port: u16, user: &str, extra: &[String]) -> String {
    let mut lines = vec![
        format!("full address:s:{host}:{port}"),
        format!("username:s:{}", one_line(user)),
        "prompt for credentials:i:1".to_string(),
        "screen mode id:i:2".to_string(),
        "authentication level:i:2".to_string(),
    ];
    lines.extend(extra.iter().map(|l| one_line(l)));
    lines.join("\r\n") + "\r\n"
}

/// A virt-viewer `.vv` file for SPICE.
fn vv_file(host: &str, port: u16, title: &str, extra: &[String]) -> String {
    let mut lines = vec![
        "[virt-viewer]".to_string(),
        "type=spice".to_string(),
        format!("host={host}"),
        format!("port={port}"),
        format!("title={}", one_line(title)),
        "delete-this-file=1".to_string(),
    ];
    lines.extend(extra.iter().map(|l| one_line(l)));
    lines.join("\n") + "\n"
}

/// A value can never add a line to a connection file.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// The broker's ticket-signing key from its stored secret bytes.
pub fn signing_key(secret: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn setting(protocol: Protocol) -> ProtocolSetting {
        ProtocolSetting {
            protocol,
            priority: 1,
            file_lines: vec!["audiomode:i:0".into()],
            command_line: "/f".into(),
            via_gateway: false,
            gateway_method: Default::default(),
        }
    }

    #[test]
    fn rdp_and_spice_files_carry_address_and_plan_lines() {
        let p = params(
            &setting(Protocol::Rdp),
            "10.0.0.5",
            3389,
            "alice",
            "Desk 01",
            None,
        );
        let file = p.file.expect("rdp file");
        assert!(
            file.starts_with("full address:s:10.0.0.5:3389\r\n"),
            "{file}"
        );
        assert!(file.contains("username:s:alice\r\n"));
        assert!(file.ends_with("audiomode:i:0\r\n"));
        assert_eq!(p.file_name.as_deref(), Some("Desk_01.rdp"));
        let p = params(
            &setting(Protocol::Spice),
            "fd00::5",
            5901,
            "alice",
            "Desk",
            None,
        );
        let file = p.file.expect("vv file");
        assert!(
            file.contains("[virt-viewer]\ntype=spice\nhost=fd00::5\nport=5901\n"),
            "{file}"
        );
        assert_eq!(p.uri, "spice://[fd00::5]:5901");
        let p = params(&setting(Protocol::Vnc), "h", 5900, "alice", "D", None);
        assert_eq!((p.uri.as_str(), p.file.is_none()), ("vnc://h:5900", true));
    }

    #[test]
    fn values_cannot_inject_lines_into_connection_files() {
        let p = params(
            &setting(Protocol::Rdp),
            "h",
            1,
            "bob\r\nalternate shell:s:evil",
            "D",
            None,
        );
        let file = p.file.expect("file");
        assert!(!file.contains("\r\nalternate shell"), "{file}");
    }

    #[test]
    fn tickets_verify_and_refuse_tampering_other_keys_and_expiry() {
        let key = signing_key(&[7u8; 32]);
        let now = Utc::now();
        let ticket = Ticket {
            session: "s1".into(),
            user: "alice".into(),
            host: "10.0.0.5".into(),
            port: 3389,
            client: None,
            expires: (now + Duration::seconds(60)).timestamp(),
        };
        let text = ticket.sign(&key);
        assert!(text.starts_with("GT1."));
        assert_eq!(
            Ticket::verify(&text, &key.verifying_key(), now),
            Ok(ticket.clone())
        );
        let other = signing_key(&[8u8; 32]);
        assert_eq!(
            Ticket::verify(&text, &other.verifying_key(), now),
            Err(TicketError::BadSignature)
        );
        // Changing the destination breaks the signature.
        let mut forged = ticket.clone();
        forged.port = 22;
        let forged_payload = B64.encode(serde_json::to_vec(&forged).expect("json"));
        let sig = text.rsplit('.').next().expect("sig");
        let tampered = format!("GT1.{forged_payload}.{sig}");
        assert_eq!(
            Ticket::verify(&tampered, &key.verifying_key(), now),
            Err(TicketError::BadSignature)
        );
        assert_eq!(
            Ticket::verify(&text, &key.verifying_key(), now + Duration::seconds(61)),
            Err(TicketError::Expired)
        );
        assert!(matches!(
            Ticket::verify("nonsense", &key.verifying_key(), now),
            Err(TicketError::Malformed(_))
        ));
    }
}
