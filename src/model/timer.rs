//! Plan timers: what the release and power plans do some minutes after something happens to a
//! desktop, kept in the store so that a restart resumes them.
//!
//! Owns the events a desktop goes through ([`DesktopEvent`]: from the client API, the desktop's
//! agent and the broker itself), the rules that turn an event and the plans of the desktop's
//! assignment into timers ([`timers_for`]) and say which pending timers an event makes moot
//! ([`cancels`]), the stored timer ([`PlanTimer`], keyed by due time so the due ones are one
//! range of keys, with a per-desktop index [`DesktopTimers`]), the plans remembered at
//! assignment ([`AssignedPlans`]), the desktop's last reported use ([`DesktopUse`]), and the
//! body the agent sends ([`parse_agent_event`]).
//!
//! Pure: no I/O, no clock (callers pass `now`). Running a timer is the broker's work.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::FieldError;
use super::desktop::Desktop;
use super::plan::{PowerAction, PowerPlan, PowerRule, ReleasePlan};
use crate::store::Record;

/// A hundred years in seconds: the longest idle time counted.
const CENTURY: u64 = 100 * 365 * 24 * 3600;

/// What a timer does when it comes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerAction {
    /// Ends the user's sessions on the desktop (the gateway closes its tunnels) and asks the
    /// desktop's agent to log the user out ([`UseState::LogoutRequested`]). The logout rules
    /// apply when the agent reports the logout, never before: until then the user's desktop
    /// session may still be open, and the desktop must not go to anyone else.
    ForcedLogout,
    /// Gives the desktop back to its pool.
    Release,
    /// Acts on the desktop's power through its center.
    Power(PowerAction),
    /// Deletes the machine (deletable desktops only).
    DeleteVm,
}

impl TimerAction {
    /// In words: "release", "power: shutdown".
    pub fn describe(&self) -> String {
        match self {
            TimerAction::ForcedLogout => "forced logout".into(),
            TimerAction::Release => "release".into(),
            TimerAction::Power(a) => format!("power: {}", power_word(*a)),
            TimerAction::DeleteVm => "delete the machine".into(),
        }
    }
}

fn power_word(a: PowerAction) -> &'static str {
    match a {
        PowerAction::Nothing => "nothing",
        PowerAction::Start => "start",
        PowerAction::Suspend => "suspend",
        PowerAction::Shutdown => "shut down",
        PowerAction::PowerOff => "power off",
        PowerAction::Reboot => "reboot",
    }
}

/// The event a timer was set by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerCause {
    Disconnect,
    Logout,
    Idle,
    Release,
}

/// One pending action of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanTimer {
    pub id: String,
    pub desktop: String,
    /// The user the desktop was assigned to when the timer was set (`server/username`).
    pub user: String,
    /// The broker session it concerns, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub action: TimerAction,
    pub due: DateTime<Utc>,
    pub cause: TimerCause,
    pub created: DateTime<Utc>,
    /// The plan it comes from, for the history: "release plan `Default`".
    #[serde(default)]
    pub plan: String,
    /// Earlier tries of a power action or deletion its center refused or did not answer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Record for PlanTimer {
    const TREE: &'static str = "plan_timer_by_due";
}

/// How often a power action or deletion is tried before it is given up.
pub const MOST_ATTEMPTS: u32 = 3;

impl PlanTimer {
    /// The same action tried again later, after a failed try: `None` when it is not one that
    /// is tried again (a release or a forced logout: the next event decides) or tries are
    /// used up. The wait grows with each try (5, then 10 minutes).
    pub fn retry(&self, now: DateTime<Utc>, id: String) -> Option<PlanTimer> {
        let again = matches!(self.action, TimerAction::Power(_) | TimerAction::DeleteVm)
            && self.attempts + 1 < MOST_ATTEMPTS;
        again.then(|| PlanTimer {
            id,
            due: now + Duration::minutes(5 * i64::from(self.attempts + 1)),
            attempts: self.attempts + 1,
            ..self.clone()
        })
    }

    /// The store key: the due time (milliseconds, hex, fixed width) then the id, so that keys
    /// sort by due time.
    pub fn key(&self) -> String {
        format!("{}-{}", crate::store::time_key(self.due), self.id)
    }
}

/// The first key after every timer due at or before `now`: the due timers are the keys
/// before it.
pub fn due_until_key(now: DateTime<Utc>) -> String {
    crate::store::time_key(now + Duration::milliseconds(1))
}

/// The keys of a desktop's pending timers, written with them in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesktopTimers {
    pub keys: Vec<String>,
}

impl Record for DesktopTimers {
    const TREE: &'static str = "plan_timer_keys_by_desktop";
}

/// The plans of a desktop's assignment, remembered when it is assigned, so that events after
/// the user is gone (a disconnect, the release) still know them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignedPlans {
    pub user: String,
    pub power_plan: String,
    pub release_plan: String,
    pub assigned: DateTime<Utc>,
}

impl Record for AssignedPlans {
    const TREE: &'static str = "plans_by_desktop";
}

/// Something that happened to a desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesktopEvent {
    /// A client connected through the broker.
    Connect,
    /// The user logged in (the agent saw it).
    Login,
    Disconnect,
    Logout,
    Lock,
    Unlock,
    /// The user is active again after an idle report (the agent saw input).
    Active,
    /// Idle for this many seconds already.
    Idle {
        seconds: u64,
    },
    /// The desktop went back to its pool.
    Release,
}

impl DesktopEvent {
    pub fn name(&self) -> &'static str {
        match self {
            DesktopEvent::Connect => "connect",
            DesktopEvent::Login => "login",
            DesktopEvent::Disconnect => "disconnect",
            DesktopEvent::Logout => "logout",
            DesktopEvent::Lock => "lock",
            DesktopEvent::Unlock => "unlock",
            DesktopEvent::Active => "active",
            DesktopEvent::Idle { .. } => "idle",
            DesktopEvent::Release => "release",
        }
    }
}

/// Whether `event` makes the pending `timer` moot, so that it is cancelled:
/// - a connect or a login (the user is back): every pending timer of the desktop;
/// - an unlock, or the user active again: the idle timers;
/// - a disconnect, an idle report or a release: the timers of the same cause (they are set
///   again from this event), and a release also every other timer of the assignment;
/// - a logout: the logout and idle timers, and a forced logout still pending.
pub fn cancels(event: &DesktopEvent, timer: &PlanTimer) -> bool {
    match event {
        DesktopEvent::Connect | DesktopEvent::Login | DesktopEvent::Release => true,
        DesktopEvent::Lock => false,
        DesktopEvent::Unlock | DesktopEvent::Active => timer.cause == TimerCause::Idle,
        DesktopEvent::Disconnect => timer.cause == TimerCause::Disconnect,
        DesktopEvent::Idle { .. } => timer.cause == TimerCause::Idle,
        DesktopEvent::Logout => {
            matches!(timer.cause, TimerCause::Logout | TimerCause::Idle)
                || timer.action == TimerAction::ForcedLogout
        }
    }
}

/// Who and what a new timer is for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub desktop: &'a Desktop,
    pub user: &'a str,
    pub session: Option<&'a str>,
}

/// The timers the plans set for `event`:
/// - disconnect: forced logout (release plan), release (release plan), the power plan's
///   disconnect rule;
/// - logout: release (release plan), the power plan's logout rule;
/// - idle: the power plan's idle rule, counted from when the desktop became idle;
/// - release: the power plan's release rule, and deleting the machine (release plan) when
///   Gatehouse may delete it.
///
/// A rule whose action is "do nothing", or a release plan setting left empty, sets nothing.
pub fn timers_for(
    event: &DesktopEvent,
    power: &PowerPlan,
    release: &ReleasePlan,
    subject: Subject<'_>,
    now: DateTime<Utc>,
) -> Vec<PlanTimer> {
    let release_plan = format!("release plan `{}`", release.name);
    let power_plan = format!("power plan `{}`", power.name);
    let mut out = Vec::new();
    let mut add = |action: TimerAction, after: Duration, cause: TimerCause, plan: &str| {
        out.push(PlanTimer {
            id: super::new_id(),
            desktop: subject.desktop.id.clone(),
            user: subject.user.to_string(),
            session: subject.session.map(str::to_string),
            action,
            due: now + after.max(Duration::zero()),
            cause,
            created: now,
            plan: plan.to_string(),
            attempts: 0,
        });
    };
    let minutes = |m: u32| Duration::minutes(i64::from(m));
    let power_rule = |rule: &PowerRule| {
        (rule.action != PowerAction::Nothing)
            .then(|| (TimerAction::Power(rule.action), minutes(rule.after_minutes)))
    };
    match event {
        DesktopEvent::Disconnect => {
            let cause = TimerCause::Disconnect;
            if let Some(m) = release.logout_after_disconnect_minutes {
                add(TimerAction::ForcedLogout, minutes(m), cause, &release_plan);
            }
            if let Some(m) = release.release_after_disconnect_minutes {
                add(TimerAction::Release, minutes(m), cause, &release_plan);
            }
            if let Some((action, after)) = power_rule(&power.on_disconnect) {
                add(action, after, cause, &power_plan);
            }
        }
        DesktopEvent::Logout => {
            let cause = TimerCause::Logout;
            if let Some(m) = release.release_after_logout_minutes {
                add(TimerAction::Release, minutes(m), cause, &release_plan);
            }
            if let Some((action, after)) = power_rule(&power.on_logout) {
                add(action, after, cause, &power_plan);
            }
        }
        DesktopEvent::Idle { seconds } => {
            if let Some((action, after)) = power_rule(&power.on_idle) {
                // Anything beyond a century is as good as a century (and stays in range).
                let already =
                    Duration::seconds(i64::try_from((*seconds).min(CENTURY)).unwrap_or(0));
                add(action, after - already, TimerCause::Idle, &power_plan);
            }
        }
        DesktopEvent::Release => {
            let cause = TimerCause::Release;
            if let Some((action, after)) = power_rule(&power.on_release) {
                add(action, after, cause, &power_plan);
            }
            if let Some(m) = release.delete_after_release_minutes
                && subject.desktop.deletable
            {
                add(TimerAction::DeleteVm, minutes(m), cause, &release_plan);
            }
        }
        DesktopEvent::Connect
        | DesktopEvent::Login
        | DesktopEvent::Lock
        | DesktopEvent::Unlock
        | DesktopEvent::Active => {}
    }
    out
}

/// How the desktop is being used, as last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UseState {
    Connected,
    LoggedIn,
    Disconnected,
    LoggedOut,
    Locked,
    Idle,
    /// A forced logout asked the desktop's agent to log the user out; it has not reported
    /// the logout yet.
    LogoutRequested,
}

impl UseState {
    pub fn as_str(self) -> &'static str {
        match self {
            UseState::Connected => "connected",
            UseState::LoggedIn => "logged in",
            UseState::Disconnected => "disconnected",
            UseState::LoggedOut => "logged out",
            UseState::Locked => "locked",
            UseState::Idle => "idle",
            UseState::LogoutRequested => "logout requested",
        }
    }
}

/// The desktop's last reported use: what the console shows, and what the desktop's agent
/// reads (`GET /api/v1/agent/instructions`: a forced logout sets `logout_requested`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesktopUse {
    pub state: UseState,
    /// The user it concerns (`server/username`, or the name the agent reported).
    #[serde(default)]
    pub user: Option<String>,
    pub since: DateTime<Utc>,
    /// Set by a forced logout: on the request, and on the logout the agent reports after it.
    #[serde(default)]
    pub forced: bool,
}

impl Record for DesktopUse {
    const TREE: &'static str = "use_by_desktop";
}

impl DesktopUse {
    /// The state after `event`, or `None` when the event does not change it (a release
    /// forgets the use: see the caller).
    pub fn after(event: &DesktopEvent) -> Option<UseState> {
        Some(match event {
            DesktopEvent::Connect => UseState::Connected,
            DesktopEvent::Login | DesktopEvent::Unlock | DesktopEvent::Active => UseState::LoggedIn,
            DesktopEvent::Disconnect => UseState::Disconnected,
            DesktopEvent::Logout => UseState::LoggedOut,
            DesktopEvent::Lock => UseState::Locked,
            DesktopEvent::Idle { .. } => UseState::Idle,
            DesktopEvent::Release => return None,
        })
    }
}

/// A forced logout the desktop's agent has yet to carry out (`GET /api/v1/agent/instructions`
/// tells it). Cleared when a logout is reported, or when the user it names connects or logs
/// in again; a release leaves it, since that user's desktop session may still be open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogoutRequest {
    /// The user to log out (`server/username`).
    pub user: String,
    pub requested: DateTime<Utc>,
}

impl Record for LogoutRequest {
    const TREE: &'static str = "logout_request_by_desktop";
}

impl LogoutRequest {
    /// The name to log out on the desktop: the user key's name part.
    pub fn username(&self) -> &str {
        self.user
            .split_once('/')
            .map_or(self.user.as_str(), |(_, name)| name)
    }
}

/// Whether the name an agent saw logged in (`alice`, `EXAMPLE\alice`, `alice@example.com`)
/// is the user of `key` (`server/username`), ignoring case as Windows and directories do.
pub fn same_person(seen: &str, key: &str) -> bool {
    let name = key.split_once('/').map_or(key, |(_, name)| name);
    let seen = seen.rsplit_once('\\').map_or(seen, |(_, name)| name);
    let seen = seen.split_once('@').map_or(seen, |(name, _)| name);
    let name = name.split_once('@').map_or(name, |(name, _)| name);
    !seen.is_empty() && seen.eq_ignore_ascii_case(name)
}

/// What a desktop's agent reports: an event, and the user it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReport {
    pub event: DesktopEvent,
    pub user: Option<String>,
    /// The desktop the agent believes it runs on, when it says (checked against its token).
    pub desktop: Option<String>,
}

/// The events an agent may report.
pub const AGENT_EVENTS: [&str; 7] = [
    "login",
    "logout",
    "disconnect",
    "lock",
    "unlock",
    "active",
    "idle",
];

/// Reads an agent's body, `{"event": "idle", "seconds": 600, "user": "alice"}`: every problem
/// is named by its field.
pub fn parse_agent_event(body: &Value) -> Result<AgentReport, Vec<FieldError>> {
    let Some(map) = body.as_object() else {
        return Err(vec![FieldError::new(
            "body",
            "send a JSON object: {\"event\": \"login\", \"user\": \"alice\"}",
        )]);
    };
    let mut errors = Vec::new();
    for key in map.keys() {
        if !["event", "seconds", "user", "desktop"].contains(&key.as_str()) {
            errors.push(FieldError::new(
                key.clone(),
                "unknown field: the fields are event, seconds, user and desktop",
            ));
        }
    }
    let choices = AGENT_EVENTS.join(", ");
    let name = match map.get("event") {
        None => {
            errors.push(FieldError::new(
                "event",
                format!("missing: say which event ({choices})"),
            ));
            None
        }
        Some(Value::String(s)) if AGENT_EVENTS.contains(&s.as_str()) => Some(s.as_str()),
        Some(other) => {
            errors.push(FieldError::new(
                "event",
                format!("{other} is not an event: use one of {choices}"),
            ));
            None
        }
    };
    let seconds = match map.get("seconds") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(s) => Some(s),
            None => {
                errors.push(FieldError::new(
                    "seconds",
                    format!("{v} is not a whole number of seconds (0 or more)"),
                ));
                None
            }
        },
    };
    match (name, map.get("seconds").filter(|v| !v.is_null())) {
        (Some("idle"), None) => errors.push(FieldError::new(
            "seconds",
            "an idle event says for how many seconds the desktop has been idle",
        )),
        (Some(n), Some(_)) if n != "idle" => errors.push(FieldError::new(
            "seconds",
            "only an idle event takes seconds: leave it out",
        )),
        _ => {}
    }
    let text = |key: &str, errors: &mut Vec<FieldError>| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 256 => {
            Some(s.trim().to_string())
        }
        Some(_) => {
            errors.push(FieldError::new(
                key,
                "must be a non-empty text of at most 256 bytes",
            ));
            None
        }
    };
    let user = text("user", &mut errors);
    let desktop = text("desktop", &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let event = match name.unwrap_or_default() {
        "login" => DesktopEvent::Login,
        "logout" => DesktopEvent::Logout,
        "disconnect" => DesktopEvent::Disconnect,
        "lock" => DesktopEvent::Lock,
        "unlock" => DesktopEvent::Unlock,
        "active" => DesktopEvent::Active,
        _ => DesktopEvent::Idle {
            seconds: seconds.unwrap_or_default(),
        },
    };
    Ok(AgentReport {
        event,
        user,
        desktop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_s_user_name_is_matched_to_the_holder_in_any_windows_spelling() {
        for seen in [
            "alice",
            "ALICE",
            "EXAMPLE\\alice",
            "alice@example.com",
            "ex\\Alice@x",
        ] {
            assert!(same_person(seen, "corp/alice"), "{seen}");
        }
        for seen in [
            "bob",
            "EXAMPLE\\bob",
            "alice2",
            "",
            "EXAMPLE\\",
            "@example.com",
        ] {
            assert!(!same_person(seen, "corp/alice"), "{seen}");
        }
        assert!(same_person("alice", "corp/alice@example.com"));
        let r = LogoutRequest {
            user: "corp/alice".into(),
            requested: Utc::now(),
        };
        assert_eq!(r.username(), "alice");
    }
    use crate::model::Protocol;
    use crate::model::desktop::DesktopInput;
    use serde_json::json;

    fn desktop(deletable: bool) -> Desktop {
        let mut d = Desktop::from_input(
            DesktopInput {
                name: "vm-1".into(),
                display_name: String::new(),
                address: "10.0.0.1".into(),
                port: None,
                protocol: Protocol::Rdp,
                os: String::new(),
            },
            Utc::now(),
        );
        d.deletable = deletable;
        d
    }

    fn plans() -> (PowerPlan, ReleasePlan) {
        let mut power = PowerPlan::default_plan();
        power.on_disconnect = PowerRule {
            after_minutes: 30,
            action: PowerAction::Suspend,
        };
        power.on_release = PowerRule {
            after_minutes: 5,
            action: PowerAction::Shutdown,
        };
        power.on_idle = PowerRule {
            after_minutes: 20,
            action: PowerAction::PowerOff,
        };
        let mut release = ReleasePlan::default_plan();
        release.logout_after_disconnect_minutes = Some(60);
        release.release_after_logout_minutes = Some(0);
        release.delete_after_release_minutes = Some(10);
        (power, release)
    }

    fn set(event: DesktopEvent, deletable: bool, now: DateTime<Utc>) -> Vec<(TimerAction, i64)> {
        let (power, release) = plans();
        let d = desktop(deletable);
        timers_for(
            &event,
            &power,
            &release,
            Subject {
                desktop: &d,
                user: "ldap/alice",
                session: Some("s1"),
            },
            now,
        )
        .into_iter()
        .map(|t| (t.action, (t.due - now).num_minutes()))
        .collect()
    }

    #[test]
    fn each_event_sets_the_timers_its_plans_name() {
        let now = Utc::now();
        assert_eq!(
            set(DesktopEvent::Disconnect, false, now),
            [
                (TimerAction::ForcedLogout, 60),
                (TimerAction::Power(PowerAction::Suspend), 30)
            ]
        );
        assert_eq!(
            set(DesktopEvent::Logout, false, now),
            [(TimerAction::Release, 0)]
        );
        assert_eq!(
            set(DesktopEvent::Release, true, now),
            [
                (TimerAction::Power(PowerAction::Shutdown), 5),
                (TimerAction::DeleteVm, 10)
            ]
        );
        assert_eq!(
            set(DesktopEvent::Release, false, now),
            [(TimerAction::Power(PowerAction::Shutdown), 5)],
            "a machine Gatehouse may not delete is never deleted"
        );
        // Idle for 15 minutes already: the 20-minute rule fires 5 minutes from now; idle for
        // longer than the rule, at once.
        assert_eq!(
            set(DesktopEvent::Idle { seconds: 900 }, false, now),
            [(TimerAction::Power(PowerAction::PowerOff), 5)]
        );
        assert_eq!(
            set(DesktopEvent::Idle { seconds: 7200 }, false, now),
            [(TimerAction::Power(PowerAction::PowerOff), 0)]
        );
        assert_eq!(
            set(DesktopEvent::Idle { seconds: u64::MAX }, false, now),
            [(TimerAction::Power(PowerAction::PowerOff), 0)],
            "any idle time is counted without overflowing"
        );
        for quiet in [
            DesktopEvent::Connect,
            DesktopEvent::Login,
            DesktopEvent::Lock,
            DesktopEvent::Unlock,
        ] {
            assert!(set(quiet, true, now).is_empty(), "{quiet:?}");
        }
        // The default plans: release right after logout, nothing else.
        let d = desktop(true);
        let subject = Subject {
            desktop: &d,
            user: "u",
            session: None,
        };
        let (power, release) = (PowerPlan::default_plan(), ReleasePlan::default_plan());
        assert!(timers_for(&DesktopEvent::Disconnect, &power, &release, subject, now).is_empty());
        assert!(timers_for(&DesktopEvent::Release, &power, &release, subject, now).is_empty());
    }

    #[test]
    fn a_reconnect_cancels_everything_and_other_events_only_what_they_replace() {
        let now = Utc::now();
        let (power, release) = plans();
        let d = desktop(true);
        let subject = Subject {
            desktop: &d,
            user: "u",
            session: None,
        };
        let mut pending = Vec::new();
        for e in [
            DesktopEvent::Disconnect,
            DesktopEvent::Idle { seconds: 0 },
            DesktopEvent::Logout,
        ] {
            pending.extend(timers_for(&e, &power, &release, subject, now));
        }
        let kept = |event: DesktopEvent| -> Vec<(TimerCause, TimerAction)> {
            pending
                .iter()
                .filter(|t| !cancels(&event, t))
                .map(|t| (t.cause, t.action))
                .collect()
        };
        assert!(kept(DesktopEvent::Connect).is_empty());
        assert!(kept(DesktopEvent::Login).is_empty());
        assert!(kept(DesktopEvent::Release).is_empty());
        assert_eq!(kept(DesktopEvent::Lock).len(), pending.len());
        assert!(
            kept(DesktopEvent::Unlock)
                .iter()
                .all(|(c, _)| *c != TimerCause::Idle)
        );
        assert_eq!(
            kept(DesktopEvent::Logout),
            [(
                TimerCause::Disconnect,
                TimerAction::Power(PowerAction::Suspend)
            )],
            "a logout makes a pending forced logout moot"
        );
        assert!(
            kept(DesktopEvent::Disconnect)
                .iter()
                .all(|(c, _)| *c != TimerCause::Disconnect),
            "a second disconnect replaces the first one's timers"
        );
    }

    #[test]
    fn keys_sort_by_due_time_and_the_due_bound_includes_now() {
        let now = Utc::now();
        let d = desktop(false);
        let (power, release) = plans();
        let subject = Subject {
            desktop: &d,
            user: "u",
            session: None,
        };
        let mut timers = timers_for(&DesktopEvent::Disconnect, &power, &release, subject, now);
        timers.extend(timers_for(
            &DesktopEvent::Logout,
            &power,
            &release,
            subject,
            now,
        ));
        let mut keys: Vec<(String, DateTime<Utc>)> =
            timers.iter().map(|t| (t.key(), t.due)).collect();
        keys.sort();
        assert!(keys.windows(2).all(|w| w[0].1 <= w[1].1));
        let bound = due_until_key(now);
        let due: Vec<&(String, DateTime<Utc>)> = keys.iter().filter(|(k, _)| *k < bound).collect();
        assert_eq!(due.len(), 1, "only the release after logout is due now");
        assert_eq!(due[0].1, now);
    }

    #[test]
    fn agent_bodies_are_read_or_refused_field_by_field() {
        let ok = parse_agent_event(&json!({"event": "idle", "seconds": 600, "user": "alice"}))
            .expect("valid");
        assert_eq!(ok.event, DesktopEvent::Idle { seconds: 600 });
        assert_eq!(ok.user.as_deref(), Some("alice"));
        assert_eq!(
            parse_agent_event(&json!({"event": "lock"}))
                .expect("valid")
                .event,
            DesktopEvent::Lock
        );
        let fields = |v: Value| -> Vec<String> {
            parse_agent_event(&v)
                .expect_err("refused")
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(json!({"event": "reboot"})), ["event"]);
        assert_eq!(fields(json!({"event": "idle"})), ["seconds"]);
        assert_eq!(fields(json!({"event": "login", "seconds": 5})), ["seconds"]);
        assert_eq!(fields(json!({"event": "idle", "seconds": -1})), ["seconds"]);
        assert_eq!(fields(json!({"user": ""})), ["event", "user"]);
        assert_eq!(fields(json!({"event": "login", "colour": 1})), ["colour"]);
        assert_eq!(fields(json!([1])), ["body"]);
    }
}
