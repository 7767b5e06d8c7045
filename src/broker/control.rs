//! Acting on a desktop's machine: start, stop, reboot, suspend, delete. The plans' timers (and
//! later the console and the broker) ask through [`DesktopControl`]; each center kind answers
//! for its desktops. The static center cannot act on the machines it lists, so
//! [`StaticControl`] refuses every action with a sentence that says so.
//!
//! The OpenStack implementation lives with the OpenStack client; `app` hands the broker one
//! `DesktopControl` that routes each desktop to its center.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::model::desktop::{Desktop, STATIC_CENTER};
use crate::model::plan::PowerAction;

/// What can be done to a desktop's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesktopAction {
    Start,
    /// An orderly shutdown, asked of the guest.
    Shutdown,
    /// Cut the power.
    PowerOff,
    RebootSoft,
    RebootHard,
    Suspend,
    Resume,
    /// Delete the machine (only for desktops marked deletable; callers check).
    Delete,
}

impl DesktopAction {
    /// The action a power plan's rule asks for (`None` for "do nothing").
    pub fn from_power(action: PowerAction) -> Option<Self> {
        Some(match action {
            PowerAction::Nothing => return None,
            PowerAction::Start => DesktopAction::Start,
            PowerAction::Suspend => DesktopAction::Suspend,
            PowerAction::Shutdown => DesktopAction::Shutdown,
            PowerAction::PowerOff => DesktopAction::PowerOff,
            PowerAction::Reboot => DesktopAction::RebootSoft,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DesktopAction::Start => "start",
            DesktopAction::Shutdown => "shut down",
            DesktopAction::PowerOff => "power off",
            DesktopAction::RebootSoft => "reboot",
            DesktopAction::RebootHard => "hard reboot",
            DesktopAction::Suspend => "suspend",
            DesktopAction::Resume => "resume",
            DesktopAction::Delete => "delete",
        }
    }
}

/// The answer of [`DesktopControl::act`]: done, or why not (a sentence for the desktop's
/// history and the audit log).
pub type ControlFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Acts on desktops' machines through their centers.
pub trait DesktopControl: Send + Sync {
    /// Does `action` to the desktop's machine; resolves when the center accepted it (or
    /// refused, with the reason).
    fn act<'a>(&'a self, desktop: &'a Desktop, action: DesktopAction) -> ControlFuture<'a>;
}

/// The static center's answer: it lists machines but cannot act on them.
#[derive(Debug, Clone, Copy, Default)]
pub struct StaticControl;

impl DesktopControl for StaticControl {
    fn act<'a>(&'a self, desktop: &'a Desktop, action: DesktopAction) -> ControlFuture<'a> {
        let center = if desktop.center == STATIC_CENTER {
            "the static center".to_string()
        } else {
            format!(
                "center `{}` (no control is connected for it)",
                desktop.center
            )
        };
        let refusal = format!(
            "{} `{}` is not supported by {center}: its machines are managed outside Gatehouse",
            capitalise(action.as_str()),
            desktop.name
        );
        Box::pin(async move { Err(refusal) })
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::model::desktop::DesktopInput;

    #[tokio::test]
    async fn the_static_center_refuses_every_action_saying_why() {
        let d = Desktop::from_input(
            DesktopInput {
                name: "pc-1".into(),
                display_name: String::new(),
                address: "10.0.0.1".into(),
                port: None,
                protocol: Protocol::Rdp,
                os: String::new(),
            },
            chrono::Utc::now(),
        );
        let err = StaticControl
            .act(&d, DesktopAction::Shutdown)
            .await
            .expect_err("refused");
        assert!(
            err.contains("not supported by the static center") && err.contains("pc-1"),
            "{err}"
        );
        assert_eq!(DesktopAction::from_power(PowerAction::Nothing), None);
        assert_eq!(
            DesktopAction::from_power(PowerAction::Reboot),
            Some(DesktopAction::RebootSoft)
        );
    }
}
