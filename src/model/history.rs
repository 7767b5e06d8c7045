//! What happened to each desktop ([`HistoryEntry`]: events, plan actions and their outcomes,
//! agent tokens issued), the desktop agents' tokens ([`AgentToken`]), and the job schedules
//! set in the console ([`JobSchedule`]).
//!
//! An agent token is shown once when it is issued and never stored: only its SHA-256 is, as
//! the key that finds its desktop, so a token names exactly one desktop. Pure: no I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::Record;

/// One line of a desktop's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub desktop: String,
    /// A stable dotted name: `event.disconnect`, `timer.release`, `agent.token`, …
    pub action: String,
    pub detail: String,
    pub ok: bool,
    /// Who: `client`, `agent`, `system` (the plans), or an administrator.
    pub actor: String,
}

impl Record for HistoryEntry {
    const TREE: &'static str = "history_by_desktop_time";
}

impl HistoryEntry {
    /// The store key: the desktop, then a time-ordered key (`Store::next_key`).
    pub fn key(desktop: &str, time_key: &str) -> String {
        format!("{desktop}/{time_key}")
    }

    /// The key range of one desktop's history: (from, to).
    pub fn range(desktop: &str) -> (String, String) {
        (format!("{desktop}/"), format!("{desktop}/~"))
    }
}

/// What a desktop agent token starts with, so that one is recognised when seen.
pub const AGENT_TOKEN_PREFIX: &str = "ghag_";

/// A desktop agent's token, stored under the token's hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentToken {
    pub desktop: String,
    pub issued: DateTime<Utc>,
    pub issued_by: String,
}

impl Record for AgentToken {
    const TREE: &'static str = "agent_token_by_hash";
}

/// The hash of the token a desktop's agent has now (a new token replaces it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTokenHash {
    pub hash: String,
}

impl Record for AgentTokenHash {
    const TREE: &'static str = "agent_token_hash_by_desktop";
}

/// A new agent token and its hash: the token is for the administrator's eyes once, the hash
/// for the store.
pub fn issue_agent_token() -> (String, String) {
    super::new_token(AGENT_TOKEN_PREFIX)
}

/// A job's schedule as an administrator set it in the console, in place of the configured one
/// (empty: the job is off).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSchedule {
    pub schedule: String,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

impl Record for JobSchedule {
    const TREE: &'static str = "job_schedule_by_name";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_tokens_are_random_and_only_their_hash_is_kept() {
        let (a, hash_a) = issue_agent_token();
        let (b, hash_b) = issue_agent_token();
        assert!(a.starts_with(AGENT_TOKEN_PREFIX) && a.len() > 40);
        assert_ne!(a, b);
        assert_ne!(hash_a, hash_b);
        assert_eq!(hash_a, super::super::gateway::hash_token(&a));
        assert!(!hash_a.contains(&a[AGENT_TOKEN_PREFIX.len()..]));
    }

    #[test]
    fn a_desktop_s_history_range_holds_only_its_keys() {
        let (from, to) = HistoryEntry::range("d1");
        let mine = HistoryEntry::key("d1", "0000000000001-0000000000000001");
        let other = HistoryEntry::key("d10", "0000000000001-0000000000000001");
        assert!(from <= mine && mine < to);
        assert!(!(from <= other && other < to));
    }
}
