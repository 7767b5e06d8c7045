//! Plans: how a desktop is reached (protocol plans), what happens to its power over a session's
//! life (power control plans), and how long it stays with its user (release plans). The
//! broker sends the plans with each desktop it hands out; the scheduler acts on their timers.

use serde::{Deserialize, Serialize};

use super::{FieldError, Protocol};
use crate::store::Record;

/// The id of the plan of each kind that exists from the start.
pub const DEFAULT_PLAN_ID: &str = "default";

/// One protocol's settings inside a protocol plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolSetting {
    pub protocol: Protocol,
    /// 1 is tried first; 0 means this protocol is not offered.
    pub priority: u8,
    /// Lines added to the connection file (`.rdp`, `.vv`), one setting per line.
    #[serde(default)]
    pub file_lines: Vec<String>,
    /// Extra command-line parameters for the client.
    #[serde(default)]
    pub command_line: String,
    /// Connect through the gateway instead of directly.
    #[serde(default)]
    pub via_gateway: bool,
    /// How the gateway carries it: a WebSocket tunnel (clients that speak it, or
    /// `gatehouse tunnel`), or a forwarded port for native clients.
    #[serde(default)]
    pub gateway_method: GatewayMethod,
}

/// How a connection goes through the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayMethod {
    #[default]
    Tunnel,
    ForwardedPort,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolPlan {
    pub id: String,
    pub name: String,
    pub protocols: Vec<ProtocolSetting>,
}

impl Record for ProtocolPlan {
    const TREE: &'static str = "protocol_plan_by_id";
}

impl ProtocolPlan {
    /// RDP first, then SPICE, VNC and SSH, all direct.
    pub fn default_plan() -> Self {
        let setting = |protocol, priority| ProtocolSetting {
            protocol,
            priority,
            file_lines: Vec::new(),
            command_line: String::new(),
            via_gateway: false,
            gateway_method: GatewayMethod::Tunnel,
        };
        Self {
            id: DEFAULT_PLAN_ID.into(),
            name: "Default".into(),
            protocols: vec![
                setting(Protocol::Rdp, 1),
                setting(Protocol::Spice, 2),
                setting(Protocol::Vnc, 3),
                setting(Protocol::Ssh, 4),
            ],
        }
    }

    /// The settings for a protocol when the plan offers it.
    pub fn setting(&self, protocol: Protocol) -> Option<&ProtocolSetting> {
        self.protocols
            .iter()
            .find(|s| s.protocol == protocol && s.priority > 0)
    }

    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = name_errors(&self.name);
        for (i, s) in self.protocols.iter().enumerate() {
            if self.protocols[..i].iter().any(|o| o.protocol == s.protocol) {
                errors.push(FieldError::new(
                    "protocols",
                    format!(
                        "{} appears twice; keep one entry per protocol",
                        s.protocol.as_str()
                    ),
                ));
            }
            if s.file_lines
                .iter()
                .any(|l| l.contains('\n') || l.contains('\r'))
            {
                errors.push(FieldError::new(
                    "file_lines",
                    "each file line must be a single line",
                ));
            }
        }
        if !self.protocols.iter().any(|s| s.priority > 0) {
            errors.push(FieldError::new(
                "protocols",
                "turn on at least one protocol (priority 1 or more)",
            ));
        }
        errors
    }
}

/// What to do with a desktop's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    #[default]
    Nothing,
    Start,
    Suspend,
    Shutdown,
    PowerOff,
    Reboot,
}

/// One rule of a power plan: after `after_minutes`, do `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PowerRule {
    pub after_minutes: u32,
    pub action: PowerAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerPlan {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub on_disconnect: PowerRule,
    #[serde(default)]
    pub on_logout: PowerRule,
    #[serde(default)]
    pub on_release: PowerRule,
    /// Applies after the desktop has been idle for `after_minutes`.
    #[serde(default)]
    pub on_idle: PowerRule,
}

impl Record for PowerPlan {
    const TREE: &'static str = "power_plan_by_id";
}

impl PowerPlan {
    /// Leaves power alone.
    pub fn default_plan() -> Self {
        Self {
            id: DEFAULT_PLAN_ID.into(),
            name: "Default".into(),
            on_disconnect: PowerRule::default(),
            on_logout: PowerRule::default(),
            on_release: PowerRule::default(),
            on_idle: PowerRule::default(),
        }
    }

    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = name_errors(&self.name);
        if self.on_idle.action != PowerAction::Nothing && self.on_idle.after_minutes == 0 {
            errors.push(FieldError::new(
                "on_idle",
                "an idle action needs the idle time in minutes (1 or more)",
            ));
        }
        errors
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasePlan {
    pub id: String,
    pub name: String,
    /// Log the user out this many minutes after they disconnect (None: never).
    #[serde(default)]
    pub logout_after_disconnect_minutes: Option<u32>,
    /// Release the desktop this many minutes after the user logs out (None: keep it).
    #[serde(default)]
    pub release_after_logout_minutes: Option<u32>,
    /// Release the desktop this many minutes after the user disconnects (None: keep it).
    #[serde(default)]
    pub release_after_disconnect_minutes: Option<u32>,
    /// Delete the virtual machine this many minutes after release (deletable desktops only).
    #[serde(default)]
    pub delete_after_release_minutes: Option<u32>,
}

impl Record for ReleasePlan {
    const TREE: &'static str = "release_plan_by_id";
}

impl ReleasePlan {
    /// Release right after logout; keep across disconnects.
    pub fn default_plan() -> Self {
        Self {
            id: DEFAULT_PLAN_ID.into(),
            name: "Default".into(),
            logout_after_disconnect_minutes: None,
            release_after_logout_minutes: Some(0),
            release_after_disconnect_minutes: None,
            delete_after_release_minutes: None,
        }
    }

    pub fn validate(&self) -> Vec<FieldError> {
        name_errors(&self.name)
    }
}

pub(super) fn name_errors(name: &str) -> Vec<FieldError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        vec![FieldError::new("name", "give it a name")]
    } else if trimmed.chars().count() > 100 {
        vec![FieldError::new(
            "name",
            "keep the name under 100 characters",
        )]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plans_are_valid() {
        assert!(ProtocolPlan::default_plan().validate().is_empty());
        assert!(PowerPlan::default_plan().validate().is_empty());
        assert!(ReleasePlan::default_plan().validate().is_empty());
    }

    #[test]
    fn protocol_plan_offers_only_enabled_protocols() {
        let mut plan = ProtocolPlan::default_plan();
        plan.protocols[0].priority = 0;
        assert!(plan.setting(Protocol::Rdp).is_none());
        assert!(plan.setting(Protocol::Spice).is_some());
        for s in &mut plan.protocols {
            s.priority = 0;
        }
        let errors = plan.validate();
        assert!(errors.iter().any(|e| e.field == "protocols"), "{errors:?}");
    }

    #[test]
    fn duplicate_protocols_and_multiline_file_lines_are_refused() {
        let mut plan = ProtocolPlan::default_plan();
        plan.protocols.push(plan.protocols[0].clone());
        plan.protocols[1].file_lines = vec!["a\nb".into()];
        let fields: Vec<String> = plan.validate().into_iter().map(|e| e.field).collect();
        assert!(fields.contains(&"protocols".to_string()));
        assert!(fields.contains(&"file_lines".to_string()));
        let mut plan = PowerPlan::default_plan();
        plan.name = " ".into();
        plan.on_idle.action = PowerAction::Suspend;
        let fields: Vec<String> = plan.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["name", "on_idle"]);
    }
}
