//! Policies: which pools a user is offered desktops from, how many, in which order, and the
//! plans that apply; and the assignment table of each authentication server that maps
//! (group, location) to (role, policy), first match winning.

use serde::{Deserialize, Serialize};

use super::FieldError;
use super::plan::{DEFAULT_PLAN_ID, name_errors};
use crate::store::Record;

pub const DEFAULT_POLICY_ID: &str = "default";

/// The order desktops of a pool are offered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PickOrder {
    /// Spread users over the pool.
    #[default]
    Random,
    /// The desktop released longest ago first.
    LeastRecentlyUsed,
    /// By desktop name.
    ByName,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub pool_id: String,
    /// How many desktops of this pool to offer (1 or more).
    pub offer: u32,
    /// Offer only desktops that are running.
    #[serde(default)]
    pub running_only: bool,
    #[serde(default)]
    pub order: PickOrder,
    #[serde(default = "default_plan")]
    pub protocol_plan: String,
    #[serde(default = "default_plan")]
    pub power_plan: String,
    #[serde(default = "default_plan")]
    pub release_plan: String,
}

fn default_plan() -> String {
    DEFAULT_PLAN_ID.to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub id: String,
    pub name: String,
    /// Tried in order.
    pub entries: Vec<PolicyEntry>,
}

impl Record for Policy {
    const TREE: &'static str = "policy_by_id";
}

impl Policy {
    pub fn default_policy() -> Self {
        Self {
            id: DEFAULT_POLICY_ID.into(),
            name: "Default".into(),
            entries: Vec::new(),
        }
    }

    /// Checks the policy; `exists(kind, id)` says whether a pool or plan id is known.
    pub fn validate(&self, exists: impl Fn(&str, &str) -> bool) -> Vec<FieldError> {
        let mut errors = name_errors(&self.name);
        for (i, e) in self.entries.iter().enumerate() {
            let at = |what: &str| format!("entries[{i}].{what}");
            if !exists("pool", &e.pool_id) {
                errors.push(FieldError::new(
                    at("pool_id"),
                    format!("there is no pool `{}`", e.pool_id),
                ));
            }
            if self.entries[..i].iter().any(|o| o.pool_id == e.pool_id) {
                errors.push(FieldError::new(at("pool_id"), "the pool is listed twice"));
            }
            if e.offer == 0 {
                errors.push(FieldError::new(at("offer"), "offer at least 1 desktop"));
            }
            for (kind, id) in [
                ("protocol_plan", &e.protocol_plan),
                ("power_plan", &e.power_plan),
                ("release_plan", &e.release_plan),
            ] {
                if !exists(kind, id) {
                    errors.push(FieldError::new(
                        at(kind),
                        format!("there is no {} `{id}`", kind.replace('_', " ")),
                    ));
                }
            }
        }
        errors
    }
}

/// One row of an assignment table. `None` matches anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignmentRow {
    /// A group name as the directory reports it (compared case-insensitively).
    pub group: Option<String>,
    pub location_id: Option<String>,
    pub role_id: String,
    pub policy_id: String,
}

/// The assignment table of one authentication server, kept under the server's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AssignmentTable {
    pub rows: Vec<AssignmentRow>,
    /// For everyone no row matched; `None` means they get no access.
    pub otherwise: Option<(String, String)>,
}

impl Record for AssignmentTable {
    const TREE: &'static str = "assignments_by_server";
}

/// Which row decided, for the test-login report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MatchedRow {
    Row(usize),
    Otherwise,
}

impl AssignmentTable {
    /// The first row whose group the user has and whose location is theirs.
    pub fn decide(&self, groups: &[String], location_id: &str) -> Option<(MatchedRow, &str, &str)> {
        for (i, row) in self.rows.iter().enumerate() {
            let group_ok = row
                .group
                .as_deref()
                .is_none_or(|g| groups.iter().any(|have| have.eq_ignore_ascii_case(g)));
            let location_ok = row.location_id.as_deref().is_none_or(|l| l == location_id);
            if group_ok && location_ok {
                return Some((MatchedRow::Row(i), &row.role_id, &row.policy_id));
            }
        }
        self.otherwise
            .as_ref()
            .map(|(role, policy)| (MatchedRow::Otherwise, role.as_str(), policy.as_str()))
    }

    pub fn validate(&self, exists: impl Fn(&str, &str) -> bool) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let rows = self.rows.iter().enumerate().map(|(i, r)| {
            (
                format!("rows[{i}]"),
                r.location_id.as_deref(),
                r.role_id.as_str(),
                r.policy_id.as_str(),
            )
        });
        let otherwise = self.otherwise.iter().map(|(role, policy)| {
            (
                "otherwise".to_string(),
                None,
                role.as_str(),
                policy.as_str(),
            )
        });
        for (at, location, role, policy) in rows.chain(otherwise) {
            if let Some(l) = location
                && !exists("location", l)
            {
                errors.push(FieldError::new(
                    format!("{at}.location_id"),
                    format!("there is no location `{l}`"),
                ));
            }
            if !exists("role", role) {
                errors.push(FieldError::new(
                    format!("{at}.role_id"),
                    format!("there is no role `{role}`"),
                ));
            }
            if !exists("policy", policy) {
                errors.push(FieldError::new(
                    format!("{at}.policy_id"),
                    format!("there is no policy `{policy}`"),
                ));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: Option<&str>, location: Option<&str>, policy: &str) -> AssignmentRow {
        AssignmentRow {
            group: group.map(str::to_string),
            location_id: location.map(str::to_string),
            role_id: "user".into(),
            policy_id: policy.into(),
        }
    }

    #[test]
    fn first_matching_row_wins_then_otherwise() {
        let table = AssignmentTable {
            rows: vec![
                row(Some("Engineers"), Some("office"), "eng-office"),
                row(Some("engineers"), None, "eng-anywhere"),
                row(None, Some("office"), "office"),
            ],
            otherwise: Some(("user".into(), "default".into())),
        };
        let eng = vec!["ENGINEERS".to_string()];
        assert_eq!(
            table.decide(&eng, "office").map(|d| d.2),
            Some("eng-office")
        );
        assert_eq!(
            table.decide(&eng, "home").map(|d| d.2),
            Some("eng-anywhere")
        );
        assert_eq!(table.decide(&[], "office").map(|d| d.2), Some("office"));
        let other = table.decide(&[], "home").expect("otherwise");
        assert_eq!((other.0, other.2), (MatchedRow::Otherwise, "default"));
        let closed = AssignmentTable {
            rows: table.rows.clone(),
            otherwise: None,
        };
        assert!(closed.decide(&[], "home").is_none(), "no row, no access");
    }

    #[test]
    fn policy_validation_names_each_bad_field() {
        let policy = Policy {
            id: "p".into(),
            name: "P".into(),
            entries: vec![
                PolicyEntry {
                    pool_id: "a".into(),
                    offer: 0,
                    running_only: false,
                    order: PickOrder::ByName,
                    protocol_plan: "default".into(),
                    power_plan: "missing".into(),
                    release_plan: "default".into(),
                },
                PolicyEntry {
                    pool_id: "a".into(),
                    offer: 1,
                    running_only: false,
                    order: PickOrder::Random,
                    protocol_plan: "default".into(),
                    power_plan: "default".into(),
                    release_plan: "default".into(),
                },
            ],
        };
        let exists = |_: &str, id: &str| id != "missing";
        let fields: Vec<String> = policy
            .validate(exists)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "entries[0].offer",
                "entries[0].power_plan",
                "entries[1].pool_id"
            ]
        );
        assert!(Policy::default_policy().validate(exists).is_empty());
    }
}
