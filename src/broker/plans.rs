//! Release and power plans over time: events reported for a desktop (by the client API, the
//! desktop's agent, or the broker itself on connect and release) set and cancel the plans'
//! timers, and the `plan_timers` job runs those that are due.
//!
//! - An event is checked (a client may only report for the desktop it holds), a disconnect or
//!   logout ends the desktop's open sessions (the gateway closes their tunnels), then the
//!   pending timers the event makes moot are cancelled and the ones its plans name are set, in
//!   one store transaction over the timers and their per-desktop index.
//! - The plans are those of the assignment, remembered when the desktop was assigned
//!   (`AssignedPlans`); the default plans when none were.
//! - A due timer runs, then leaves the store: one that came due while the appliance was
//!   stopped runs at the first run after the start. Its action goes into the desktop's
//!   history and the audit log with its outcome; a release, a forced logout or a deletion
//!   that no longer applies (the desktop was released or assigned again) is skipped and says
//!   so. Timers its action sets that are due at once run in the same run. Just before it acts,
//!   a timer is looked up again: one an event cancelled meanwhile (a user back while an
//!   earlier action of the run was waiting on a center) does nothing.
//! - A forced logout ends the sessions and leaves a [`LogoutRequest`] for the desktop's agent
//!   (`GET /api/v1/agent/instructions`); the logout rules (a release after the logout, …)
//!   apply when the logout is reported, so a desktop whose user may still be logged in is
//!   never given to someone else.
//! - The agent reports what it sees on the desktop; when it names a user other than the one
//!   the desktop is assigned to (an administrator logging in to fix something), the event is
//!   written to the history and does nothing else.
//!
//! Power actions and deletions go through [`DesktopControl`]. The rules of which timers an
//! event sets are `model::timer`'s.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::control::{DesktopAction, DesktopControl};
use super::{Broker, BrokerError, DesktopSession, EndedSession, OpenSessions, Result, UserKey};
use crate::admin::Actor;
use crate::model::AuditEntry;
use crate::model::desktop::Desktop;
use crate::model::history::AgentTokenHash;
use crate::model::history::HistoryEntry;
use crate::model::plan::{DEFAULT_PLAN_ID, PowerPlan, ReleasePlan};
use crate::model::timer::{
    AssignedPlans, DesktopEvent, DesktopTimers, DesktopUse, LogoutRequest, MOST_ATTEMPTS,
    PlanTimer, Subject, TimerAction, UseState, cancels, due_until_key, same_person, timers_for,
};
use crate::store::{Record, Store, TxError};

/// How long one power action or deletion may take before it counts as failed.
const ACTION_TIMEOUT: StdDuration = StdDuration::from_secs(120);
/// Due timers read at a time.
const BATCH: usize = 500;
/// Timers run at most in one run; the next run goes on with the rest.
const MOST_PER_RUN: usize = 20_000;
/// Power actions and deletions asked of the centers at once.
const IN_FLIGHT: usize = 32;

/// Who reports an event.
#[derive(Debug, Clone)]
pub enum Reporter {
    /// A signed-in client, for the desktop it holds.
    Client(UserKey),
    /// The desktop's agent, with the user it saw logged in, if it says.
    Agent(Option<String>),
    /// The broker itself, or a plan's timer.
    System,
}

impl Reporter {
    fn actor(&self) -> &'static str {
        match self {
            Reporter::Client(_) => "client",
            Reporter::Agent(_) => "agent",
            Reporter::System => "system",
        }
    }

    fn user(&self) -> Option<String> {
        match self {
            Reporter::Client(u) => Some(u.key()),
            Reporter::Agent(u) => u.clone(),
            Reporter::System => None,
        }
    }
}

/// What an event did.
#[derive(Debug, Clone, Serialize)]
pub struct EventOutcome {
    pub desktop: String,
    pub event: DesktopEvent,
    /// The timers it set.
    pub set: Vec<PlanTimer>,
    /// How many pending timers it cancelled.
    pub cancelled: usize,
    /// How many open sessions it ended.
    pub sessions_ended: usize,
}

/// What one `plan_timers` run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimerRun {
    pub ran: usize,
    pub failed: Vec<String>,
}

impl TimerRun {
    /// The job's result line.
    pub fn summary(&self) -> String {
        let mut text = match self.ran {
            0 => "no timer was due".to_string(),
            1 => "1 timer run".to_string(),
            n => format!("{n} timers run"),
        };
        if !self.failed.is_empty() {
            // The first few, so that the line stays readable; each is in its desktop's history.
            let shown: Vec<&str> = self.failed.iter().take(5).map(String::as_str).collect();
            text.push_str(&format!(
                "; {} failed: {}",
                self.failed.len(),
                shown.join("; ")
            ));
            if self.failed.len() > shown.len() {
                text.push_str(&format!("; and {} more", self.failed.len() - shown.len()));
            }
        }
        text
    }
}

impl Broker {
    /// Acts on an event reported for a desktop: a client may report only for the desktop it
    /// holds (`NotYours` otherwise); a disconnect or logout ends the desktop's open sessions;
    /// the plans' timers are set and cancelled; the desktop's history says what happened.
    pub async fn report_event(
        &self,
        desktop_id: &str,
        event: DesktopEvent,
        reporter: Reporter,
    ) -> Result<EventOutcome> {
        let id = desktop_id.to_string();
        let desktop = self
            .store
            .call(move |s| {
                s.get::<Desktop>(&id)?
                    .ok_or(BrokerError::NoSuchDesktop(id.clone()))
            })
            .await?;
        if let Reporter::Client(user) = &reporter
            && desktop.assigned_user.as_deref() != Some(user.key().as_str())
        {
            return Err(BrokerError::NotYours);
        }
        if let (Reporter::Agent(Some(seen)), Some(holder)) =
            (&reporter, desktop.assigned_user.as_deref())
            && !same_person(seen, holder)
        {
            let detail = format!(
                "{} reported by the agent for {seen}, who does not hold the desktop ({holder} \
                 does): recorded, nothing done",
                event.name()
            );
            let (id, action) = (desktop.id.clone(), format!("event.{}", event.name()));
            self.store
                .call(move |s| history(s, &id, &action, detail, true, "agent"))
                .await?;
            return Ok(EventOutcome {
                desktop: desktop.id,
                event,
                set: Vec::new(),
                cancelled: 0,
                sessions_ended: 0,
            });
        }
        let sessions_ended = if matches!(event, DesktopEvent::Disconnect | DesktopEvent::Logout) {
            self.end_sessions(&desktop.id).await?
        } else {
            0
        };
        let context = Context {
            actor: reporter.actor().to_string(),
            reporter_user: reporter.user(),
            note: match &reporter {
                Reporter::Client(u) => format!("reported by the client of {}", u.key()),
                Reporter::Agent(Some(u)) => format!("reported by the agent (user {u})"),
                Reporter::Agent(None) => "reported by the agent".to_string(),
                Reporter::System => String::new(),
            },
        };
        let now = self.now();
        let mut outcome = self
            .store
            .call(move |s| apply_event(s, &desktop, event, &context, now))
            .await?;
        outcome.sessions_ended = sessions_ended;
        Ok(outcome)
    }

    /// After a desktop was released: the release rules of its assignment's plans.
    pub(super) async fn after_release(&self, desktop: &Desktop, user: &UserKey) {
        let (desktop, user) = (desktop.clone(), user.key());
        let context = Context {
            actor: "system".into(),
            reporter_user: Some(user.clone()),
            note: format!("released from {user}"),
        };
        let now = self.now();
        let applied = self
            .store
            .call(move |s| apply_event(s, &desktop, DesktopEvent::Release, &context, now))
            .await;
        if let Err(e) = applied {
            tracing::warn!("the release plans of a released desktop were not applied: {e}");
        }
    }

    /// Ends every open session of a desktop (without releasing it), each with a notice for
    /// the gateways saved in the same transaction. Returns how many ended.
    pub async fn end_sessions(&self, desktop_id: &str) -> Result<usize> {
        let id = desktop_id.to_string();
        let refuse_until = Utc::now().timestamp() + self.settings.ticket_seconds + 1;
        let ends = self.ends.clone();
        self.store
            .call(move |s| ends.record(s, |first| end_open_sessions(s, &id, first, refuse_until)))
            .await
    }

    /// Runs the timers that are due (the `plan_timers` job). Fails only when the store
    /// does; a timer whose action fails is reported in the result and the history.
    pub async fn run_plan_timers(&self, control: &dyn DesktopControl) -> Result<TimerRun> {
        let mut run = TimerRun::default();
        while run.ran < MOST_PER_RUN {
            let bound = due_until_key(self.now());
            let due = self
                .store
                .call(move |s| {
                    Ok::<_, BrokerError>(s.range::<PlanTimer>("", &bound, false, BATCH)?)
                })
                .await?;
            if due.is_empty() {
                break;
            }
            // Releases and forced logouts run one by one, in due order (they change the
            // store, and may cancel timers after them); power actions and deletions between
            // them go to the centers together, a few at a time.
            let mut done = Vec::with_capacity(due.len());
            let mut together = Vec::new();
            for (key, timer) in due {
                if !self.pending(&key).await? {
                    continue;
                }
                if matches!(timer.action, TimerAction::Power(_) | TimerAction::DeleteVm) {
                    together.push((key, timer));
                    if together.len() == IN_FLIGHT {
                        self.fire_together(&mut together, control, &mut done).await;
                    }
                    continue;
                }
                self.fire_together(&mut together, control, &mut done).await;
                let outcome = self.fire(&key, &timer, control).await;
                done.push((key, timer, outcome));
            }
            self.fire_together(&mut together, control, &mut done).await;
            for (_, timer, outcome) in &done {
                if let Err(reason) = outcome {
                    run.failed.push(format!(
                        "{} of desktop {}: {reason}",
                        timer.action.describe(),
                        timer.desktop
                    ));
                }
            }
            run.ran += done.len();
            // One write for the batch: the timers leave the store, their outcomes go into
            // the histories and the audit log. A crash before it runs them again at the next
            // start; none of their actions does harm twice.
            let now = self.now();
            self.store.call(move |s| finish(s, &done, now)).await?;
        }
        Ok(run)
    }

    /// Whether a timer is still pending (an earlier action of the run may have cancelled it).
    async fn pending(&self, key: &str) -> Result<bool> {
        let key = key.to_string();
        self.store
            .call(move |s| Ok::<_, BrokerError>(s.get::<PlanTimer>(&key)?.is_some()))
            .await
    }

    /// Fires `timers` at once and adds their outcomes to `done`.
    async fn fire_together(
        &self,
        timers: &mut Vec<(String, PlanTimer)>,
        control: &dyn DesktopControl,
        done: &mut Vec<(String, PlanTimer, std::result::Result<String, String>)>,
    ) {
        let outcomes = futures_util::future::join_all(
            timers
                .iter()
                .map(|(key, timer)| self.fire(key, timer, control)),
        )
        .await;
        done.extend(
            timers
                .drain(..)
                .zip(outcomes)
                .map(|((key, timer), outcome)| (key, timer, outcome)),
        );
    }

    /// Does what a timer says; `Ok` with what was done (or why nothing needed doing), `Err`
    /// with why it could not be done.
    async fn fire(
        &self,
        key: &str,
        timer: &PlanTimer,
        control: &dyn DesktopControl,
    ) -> std::result::Result<String, String> {
        // Looked up again right before acting: the actions before it in this run may have
        // waited on a center for minutes, while the user came back and cancelled it.
        if !self.pending(key).await.map_err(|e| e.to_string())? {
            return Ok("skipped: cancelled meanwhile".into());
        }
        let id = timer.desktop.clone();
        let desktop = self
            .store
            .call(move |s| Ok::<_, BrokerError>(s.get::<Desktop>(&id)?))
            .await
            .map_err(|e| e.to_string())?;
        let Some(desktop) = desktop else {
            return Ok("skipped: the desktop no longer exists".into());
        };
        let held_by_timer_user = desktop.assigned_user.as_deref() == Some(timer.user.as_str());
        match timer.action {
            TimerAction::Release => {
                let Some(user) = user_key_of(&timer.user) else {
                    return Ok("skipped: the timer names no user".into());
                };
                match self.release(&user, &desktop.id).await {
                    Ok(d) => Ok(format!("`{}` released from {}", d.name, timer.user)),
                    Err(BrokerError::NotYours) => Ok(format!(
                        "skipped: `{}` is no longer held by {}",
                        desktop.name, timer.user
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
            TimerAction::ForcedLogout => {
                if !held_by_timer_user {
                    return Ok(format!(
                        "skipped: `{}` is no longer held by {}",
                        desktop.name, timer.user
                    ));
                }
                let ended = self
                    .end_sessions(&desktop.id)
                    .await
                    .map_err(|e| e.to_string())?;
                let (id, user, now) = (desktop.id.clone(), timer.user.clone(), self.now());
                let has_agent = self
                    .store
                    .call(move |s| request_logout(s, &id, &user, now))
                    .await
                    .map_err(|e| e.to_string())?;
                if has_agent {
                    Ok(format!(
                        "the agent of `{}` is asked to log {} out; {ended} session(s) ended; the \
                         logout rules apply when the logout is reported",
                        desktop.name, timer.user
                    ))
                } else {
                    Err(format!(
                        "no agent token is issued for `{}`, so nothing on it can log {} out: \
                         {ended} session(s) ended, and the desktop stays assigned until a logout \
                         is reported or an administrator releases it",
                        desktop.name, timer.user
                    ))
                }
            }
            TimerAction::Power(power) => {
                if let Some(holder) = &desktop.assigned_user
                    && *holder != timer.user
                {
                    return Ok(format!(
                        "skipped: `{}` is assigned to {holder} now",
                        desktop.name
                    ));
                }
                let Some(action) = DesktopAction::from_power(power) else {
                    return Ok("nothing to do".into());
                };
                act(control, &desktop, action).await
            }
            TimerAction::DeleteVm => {
                if !desktop.deletable {
                    return Err(format!(
                        "`{}` is not marked deletable: Gatehouse does not delete it",
                        desktop.name
                    ));
                }
                if let Some(holder) = &desktop.assigned_user {
                    return Ok(format!(
                        "skipped: `{}` is assigned again (to {holder})",
                        desktop.name
                    ));
                }
                act(control, &desktop, DesktopAction::Delete).await
            }
        }
    }
}

async fn act(
    control: &dyn DesktopControl,
    desktop: &Desktop,
    action: DesktopAction,
) -> std::result::Result<String, String> {
    match tokio::time::timeout(ACTION_TIMEOUT, control.act(desktop, action)).await {
        Ok(Ok(())) => Ok(format!("{} `{}`: done", action.as_str(), desktop.name)),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(format!(
            "{} `{}`: no answer from its center within {} s",
            action.as_str(),
            desktop.name,
            ACTION_TIMEOUT.as_secs()
        )),
    }
}

/// `server/username` back into a user key.
fn user_key_of(key: &str) -> Option<UserKey> {
    let (server_id, username) = key.split_once('/')?;
    Some(UserKey {
        server_id: server_id.to_string(),
        username: username.to_string(),
    })
}

/// How an event came about, for the history and the desktop's use.
struct Context {
    actor: String,
    reporter_user: Option<String>,
    note: String,
}

/// The plans of a desktop's assignment (the default plans when none are remembered, or when
/// a remembered one was deleted since).
fn plans_of(s: &Store, assigned: Option<&AssignedPlans>) -> Result<(PowerPlan, ReleasePlan)> {
    let power_id = assigned.map_or(DEFAULT_PLAN_ID, |a| a.power_plan.as_str());
    let release_id = assigned.map_or(DEFAULT_PLAN_ID, |a| a.release_plan.as_str());
    let power = match s.get::<PowerPlan>(power_id)? {
        Some(p) => p,
        None => s
            .get::<PowerPlan>(DEFAULT_PLAN_ID)?
            .unwrap_or_else(PowerPlan::default_plan),
    };
    let release = match s.get::<ReleasePlan>(release_id)? {
        Some(p) => p,
        None => s
            .get::<ReleasePlan>(DEFAULT_PLAN_ID)?
            .unwrap_or_else(ReleasePlan::default_plan),
    };
    Ok((power, release))
}

/// Sets and cancels timers for an event, records the desktop's use and a history line.
fn apply_event(
    s: &Store,
    desktop: &Desktop,
    event: DesktopEvent,
    context: &Context,
    now: DateTime<Utc>,
) -> Result<EventOutcome> {
    let assigned = s.get::<AssignedPlans>(&desktop.id)?;
    let user = desktop
        .assigned_user
        .clone()
        .or_else(|| assigned.as_ref().map(|a| a.user.clone()))
        .or_else(|| context.reporter_user.clone())
        .unwrap_or_default();
    let (power, release) = plans_of(s, assigned.as_ref())?;
    let set = timers_for(
        &event,
        &power,
        &release,
        Subject {
            desktop,
            user: &user,
            session: None,
        },
        now,
    );
    let cancelled = replace_timers(s, &desktop.id, |t| cancels(&event, t), &set)?;
    // A pending forced logout: done when a logout is reported; moot when its user is back.
    let mut forced = false;
    if let Some(request) = s.get::<LogoutRequest>(&desktop.id)? {
        let back = match event {
            DesktopEvent::Connect => request.user == user,
            DesktopEvent::Login => context
                .reporter_user
                .as_deref()
                .is_none_or(|seen| same_person(seen, &request.user)),
            _ => false,
        };
        if event == DesktopEvent::Logout || back {
            s.delete::<LogoutRequest>(&desktop.id)?;
            forced |= event == DesktopEvent::Logout;
        }
    }
    match DesktopUse::after(&event) {
        Some(state) => s.put(
            &desktop.id,
            &DesktopUse {
                state,
                user: context.reporter_user.clone().or(Some(user.clone())),
                since: now,
                forced,
            },
        )?,
        None => {
            s.delete::<DesktopUse>(&desktop.id)?;
        }
    }
    let mut detail = match event {
        DesktopEvent::Idle { seconds } => format!("idle for {seconds} s"),
        e => e.name().to_string(),
    };
    if !context.note.is_empty() {
        detail.push_str(&format!(" ({})", context.note));
    }
    if forced {
        detail.push_str("; forced");
    }
    if !set.is_empty() {
        detail.push_str(&format!("; set: {}", describe(&set)));
    }
    if !cancelled.is_empty() {
        detail.push_str(&format!("; cancelled: {}", describe(&cancelled)));
    }
    history(
        s,
        &desktop.id,
        &format!("event.{}", event.name()),
        detail,
        true,
        &context.actor,
    )?;
    Ok(EventOutcome {
        desktop: desktop.id.clone(),
        event,
        set,
        cancelled: cancelled.len(),
        sessions_ended: 0,
    })
}

/// Leaves a forced logout for the desktop's agent and shows it as the desktop's use. Returns
/// whether the desktop has an agent to carry it out.
fn request_logout(s: &Store, desktop_id: &str, user: &str, now: DateTime<Utc>) -> Result<bool> {
    s.put(
        desktop_id,
        &LogoutRequest {
            user: user.to_string(),
            requested: now,
        },
    )?;
    s.put(
        desktop_id,
        &DesktopUse {
            state: UseState::LogoutRequested,
            user: Some(user.to_string()),
            since: now,
            forced: true,
        },
    )?;
    Ok(s.get::<AgentTokenHash>(desktop_id)?.is_some())
}

/// The forced logout a desktop's agent has yet to carry out, if any.
pub fn logout_request(s: &Store, desktop_id: &str) -> Result<Option<LogoutRequest>> {
    Ok(s.get::<LogoutRequest>(desktop_id)?)
}

/// Timers in words: "release at 2026-11-21 10:00:00 UTC (release plan `Default`), …".
fn describe(timers: &[PlanTimer]) -> String {
    timers
        .iter()
        .map(|t| {
            format!(
                "{} at {} ({})",
                t.action.describe(),
                t.due.format("%Y-%m-%d %H:%M:%S UTC"),
                t.plan
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// In one transaction: deletes the desktop's pending timers `cancel` picks, adds `new`, and
/// keeps the per-desktop index in step. Returns the cancelled timers.
fn replace_timers(
    s: &Store,
    desktop_id: &str,
    cancel: impl Fn(&PlanTimer) -> bool,
    new: &[PlanTimer],
) -> Result<Vec<PlanTimer>> {
    let outcome = s.transact(&[PlanTimer::TREE, DesktopTimers::TREE], |tx| {
        let index: DesktopTimers = tx.get(desktop_id)?.unwrap_or_default();
        let mut keep = Vec::with_capacity(index.keys.len() + new.len());
        let mut cancelled = Vec::new();
        for key in &index.keys {
            match tx.get::<PlanTimer, BrokerError>(key)? {
                Some(t) if cancel(&t) => {
                    tx.delete::<PlanTimer, BrokerError>(key)?;
                    cancelled.push(t);
                }
                Some(_) => keep.push(key.clone()),
                None => {}
            }
        }
        for t in new {
            let key = t.key();
            tx.put(&key, t)?;
            keep.push(key);
        }
        if keep.is_empty() {
            tx.delete::<DesktopTimers, BrokerError>(desktop_id)?;
        } else {
            tx.put(desktop_id, &DesktopTimers { keys: keep })?;
        }
        Ok(cancelled)
    });
    Ok(outcome?)
}

/// After timers ran: in one transaction they leave the store (and their desktops' index),
/// a failed power action or deletion is set again for a later try ([`PlanTimer::retry`]),
/// and each action with its outcome goes into its desktop's history and the audit log.
fn finish(
    s: &Store,
    done: &[(String, PlanTimer, std::result::Result<String, String>)],
    now: DateTime<Utc>,
) -> Result<()> {
    if done.is_empty() {
        return Ok(());
    }
    let at = Utc::now();
    let mut lines = Vec::with_capacity(done.len());
    let mut retries = Vec::new();
    for (_, timer, outcome) in done {
        let name = match timer.action {
            TimerAction::ForcedLogout => "forced_logout",
            TimerAction::Release => "release",
            TimerAction::Power(_) => "power",
            TimerAction::DeleteVm => "delete_vm",
        };
        let (ok, mut said) = match outcome {
            Ok(text) => (true, text.clone()),
            Err(text) => (false, text.clone()),
        };
        let tries = format!(" (try {} of {MOST_ATTEMPTS})", timer.attempts + 1);
        match outcome
            .as_ref()
            .err()
            .and_then(|_| timer.retry(now, crate::model::new_id()))
        {
            Some(again) => {
                said.push_str(&format!(
                    "{tries}; tried again at {}",
                    again.due.format("%Y-%m-%d %H:%M:%S UTC")
                ));
                retries.push(again);
            }
            None if !ok && timer.attempts > 0 => said.push_str(&format!("{tries}; given up")),
            None => {}
        }
        let cause = match timer.cause {
            crate::model::timer::TimerCause::Disconnect => "disconnect",
            crate::model::timer::TimerCause::Logout => "logout",
            crate::model::timer::TimerCause::Idle => "idle",
            crate::model::timer::TimerCause::Release => "release",
        };
        let detail = format!(
            "{} ({}, due {}, set on {cause}): {said}",
            timer.action.describe(),
            timer.plan,
            timer.due.format("%Y-%m-%d %H:%M:%S UTC"),
        );
        let history = HistoryEntry {
            at,
            desktop: timer.desktop.clone(),
            action: format!("timer.{name}"),
            detail: detail.clone(),
            ok,
            actor: "system".into(),
        };
        let audit = AuditEntry {
            at,
            actor: Actor::system().name,
            source: String::new(),
            action: format!("plan.{name}"),
            detail: format!("desktop {}: {detail}", timer.desktop),
            ok,
        };
        lines.push((
            HistoryEntry::key(&timer.desktop, &s.next_key()?),
            history,
            s.next_key()?,
            audit,
        ));
    }
    let trees = [
        PlanTimer::TREE,
        DesktopTimers::TREE,
        HistoryEntry::TREE,
        AuditEntry::TREE,
    ];
    s.transact(&trees, |tx| {
        for ((key, timer, _), (history_key, history, audit_key, audit)) in done.iter().zip(&lines) {
            tx.delete::<PlanTimer, BrokerError>(key)?;
            if let Some(mut index) = tx.get::<DesktopTimers, BrokerError>(&timer.desktop)? {
                index.keys.retain(|k| k != key);
                if index.keys.is_empty() {
                    tx.delete::<DesktopTimers, BrokerError>(&timer.desktop)?;
                } else {
                    tx.put(&timer.desktop, &index)?;
                }
            }
            tx.put(history_key, history)?;
            tx.put(audit_key, audit)?;
        }
        for again in &retries {
            let key = again.key();
            tx.put(&key, again)?;
            let mut index = tx
                .get::<DesktopTimers, BrokerError>(&again.desktop)?
                .unwrap_or_default();
            index.keys.push(key);
            tx.put(&again.desktop, &index)?;
        }
        Ok(())
    })
    .map_err(BrokerError::from)
}

/// After a client connected (called in the store call that assigned the desktop): the user
/// is back, so every pending timer of the desktop is cancelled. Costs one read and one lazy
/// write when there are none. A failure is logged: the connection stands.
pub(super) fn connected(s: &Store, desktop_id: &str, user: &UserKey, now: DateTime<Utc>) {
    let user = user.key();
    let done = (|| {
        s.put_lazy(
            desktop_id,
            &DesktopUse {
                state: crate::model::timer::UseState::Connected,
                user: Some(user.clone()),
                since: now,
                forced: false,
            },
        )?;
        // A forced logout not yet carried out is moot: its user is back.
        if s.get::<LogoutRequest>(desktop_id)?
            .is_some_and(|r| r.user == user)
        {
            s.delete::<LogoutRequest>(desktop_id)?;
        }
        if s.get::<DesktopTimers>(desktop_id)?
            .is_none_or(|t| t.keys.is_empty())
        {
            return Ok(());
        }
        let cancelled = replace_timers(s, desktop_id, |t| cancels(&DesktopEvent::Connect, t), &[])?;
        if !cancelled.is_empty() {
            history(
                s,
                desktop_id,
                "event.connect",
                format!(
                    "{user} connected again; cancelled: {}",
                    describe(&cancelled)
                ),
                true,
                "system",
            )?;
        }
        Ok::<_, BrokerError>(())
    })();
    if let Err(e) = done {
        tracing::warn!("the timers of a reconnected desktop were not cancelled: {e}");
    }
}

/// Appends a line to a desktop's history.
pub fn history(
    s: &Store,
    desktop: &str,
    action: &str,
    detail: impl Into<String>,
    ok: bool,
    actor: &str,
) -> Result<()> {
    let key = HistoryEntry::key(desktop, &s.next_key()?);
    s.put(
        &key,
        &HistoryEntry {
            at: Utc::now(),
            desktop: desktop.to_string(),
            action: action.to_string(),
            detail: detail.into(),
            ok,
            actor: actor.to_string(),
        },
    )?;
    Ok(())
}

/// A desktop's history, newest first.
pub fn desktop_history(s: &Store, desktop: &str, limit: usize) -> Result<Vec<HistoryEntry>> {
    let (from, to) = HistoryEntry::range(desktop);
    Ok(s.range::<HistoryEntry>(&from, &to, true, limit)?
        .into_iter()
        .map(|(_, e)| e)
        .collect())
}

/// A desktop's pending timers, soonest first.
pub fn desktop_timers(s: &Store, desktop: &str) -> Result<Vec<PlanTimer>> {
    let index = s.get::<DesktopTimers>(desktop)?.unwrap_or_default();
    let mut out = Vec::with_capacity(index.keys.len());
    for key in &index.keys {
        if let Some(t) = s.get::<PlanTimer>(key)? {
            out.push(t);
        }
    }
    out.sort_by_key(|t| t.due);
    Ok(out)
}

/// Every pending timer, soonest first, up to `limit`.
pub fn pending_timers(s: &Store, limit: usize) -> Result<Vec<PlanTimer>> {
    Ok(s.range::<PlanTimer>("", "~", false, limit)?
        .into_iter()
        .map(|(_, t)| t)
        .collect())
}

/// Ends a desktop's open sessions (it stays assigned), saving a notice for each (numbered
/// from `first`).
fn end_open_sessions(
    s: &Store,
    id: &str,
    first: u64,
    refuse_until: i64,
) -> Result<(usize, Vec<EndedSession>)> {
    let trees = [OpenSessions::TREE, DesktopSession::TREE, EndedSession::TREE];
    let ended = s.transact(&trees, |tx| {
        let open: OpenSessions = tx.get::<OpenSessions, BrokerError>(id)?.unwrap_or_default();
        let mut ended = Vec::with_capacity(open.ids.len());
        for (seq, session_id) in (first..).zip(&open.ids) {
            if let Some(mut session) = tx.get::<DesktopSession, BrokerError>(session_id)?
                && session.ended.is_none()
            {
                session.ended = Some(Utc::now());
                tx.put(session_id, &session)?;
            }
            let end = EndedSession {
                seq,
                session: session_id.clone(),
                refuse_until,
            };
            tx.put(&EndedSession::key(seq), &end)?;
            ended.push(end);
        }
        if !open.ids.is_empty() {
            tx.put(id, &OpenSessions::default())?;
        }
        Ok((ended.len(), ended))
    });
    ended.map_err(|e: TxError<BrokerError>| e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_come_back_from_their_store_form() {
        let key = UserKey {
            server_id: "ldap".into(),
            username: "Alice".into(),
        };
        let back = user_key_of(&key.key()).expect("parsed");
        assert_eq!(back.key(), key.key());
        assert!(user_key_of("nobody").is_none());
    }

    #[test]
    fn a_run_says_what_ran_and_what_failed() {
        assert_eq!(TimerRun::default().summary(), "no timer was due");
        let run = TimerRun {
            ran: 2,
            failed: vec!["power: shut down of desktop d1: not supported".into()],
        };
        assert_eq!(
            run.summary(),
            "2 timers run; 1 failed: power: shut down of desktop d1: not supported"
        );
        let many = TimerRun {
            ran: 9,
            failed: (0..9).map(|i| format!("f{i}")).collect(),
        };
        assert_eq!(
            many.summary(),
            "9 timers run; 9 failed: f0; f1; f2; f3; f4; and 4 more"
        );
    }
}
