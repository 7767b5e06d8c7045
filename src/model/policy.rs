//! Policies: which pools a user is offered desktops from, how many, in which order, and the
//! plans that apply; and the assignment table of each authentication server that maps
//! (group, location) to (role, policy), first match winning.
//!
//! A row names its group by distinguished name (matched only by that one group, compared as
//! [`Dn`] compares) or, in the older form, by name (matched by every group of that name the
//! directory reports for the user, wherever it lives): see [`AssignmentRow::group`].

use serde::{Deserialize, Serialize};

use super::FieldError;
use super::dn::Dn;
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
    /// The group a user must be in, in one of two forms:
    /// - a distinguished name (any value with `=`: `cn=Admins,ou=Groups,dc=example,dc=com`):
    ///   matches only a user one of whose group DNs is that DN, compared as [`Dn`] does
    ///   (case-insensitively, spaces around `,` `=` `+` and escaping spellings aside). The
    ///   console offers and stores this form;
    /// - a name (no `=`: `Admins`): matches a user in any group whose name (its DN's first
    ///   value, the CN) is that, compared case-insensitively. Anyone who may create a group
    ///   anywhere under the search base can create one of that name, so this form is kept for
    ///   tables written before DNs were possible.
    ///
    /// A value with `=` that is not a DN is refused when the table is saved.
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

/// The groups a user is in, as the directory reported them, ready to be matched against rows.
#[derive(Debug, Clone, Default)]
pub struct UserGroups {
    names: Vec<String>,
    dns: Vec<String>,
    /// `dns` parsed, on the first row that names a DN (most tables name none).
    parsed: std::sync::OnceLock<Vec<Dn>>,
}

impl UserGroups {
    /// From the group names (CNs) and the full group DNs. A DN that does not parse is left
    /// out: no row can name it.
    pub fn new(names: &[String], dns: &[String]) -> Self {
        UserGroups {
            names: names.to_vec(),
            dns: dns.to_vec(),
            parsed: std::sync::OnceLock::new(),
        }
    }

    /// Whether a row's `group` names one of these groups (see [`AssignmentRow::group`]). A
    /// row's DN that does not parse matches nobody.
    pub fn has(&self, group: &str) -> bool {
        if names_a_dn(group) {
            let have = self.parsed.get_or_init(|| {
                self.dns
                    .iter()
                    .filter_map(|dn| Dn::parse(dn).ok())
                    .collect()
            });
            Dn::parse(group).is_ok_and(|want| have.contains(&want))
        } else {
            self.names
                .iter()
                .any(|have| have.eq_ignore_ascii_case(group))
        }
    }
}

/// Whether a row's group is given as a distinguished name rather than a name.
pub fn names_a_dn(group: &str) -> bool {
    group.contains('=')
}

/// Which row decided, for the test-login report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MatchedRow {
    Row(usize),
    Otherwise,
}

impl AssignmentTable {
    /// The first row whose group the user has and whose location is theirs.
    pub fn decide(
        &self,
        groups: &UserGroups,
        location_id: &str,
    ) -> Option<(MatchedRow, &str, &str)> {
        for (i, row) in self.rows.iter().enumerate() {
            let group_ok = row.group.as_deref().is_none_or(|g| groups.has(g));
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
        for (i, row) in self.rows.iter().enumerate() {
            if let Some(group) = row.group.as_deref().filter(|g| names_a_dn(g))
                && let Err(reason) = Dn::parse(group)
            {
                errors.push(FieldError::new(
                    format!("rows[{i}].group"),
                    format!(
                        "`{group}` is not a distinguished name: {reason}. Pick the group's DN \
                         from the list, or give its name without `=`"
                    ),
                ));
            }
        }
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
        let eng = UserGroups::new(
            &["ENGINEERS".to_string()],
            &["cn=ENGINEERS,ou=groups,dc=example".to_string()],
        );
        let none = UserGroups::default();
        assert_eq!(
            table.decide(&eng, "office").map(|d| d.2),
            Some("eng-office")
        );
        assert_eq!(
            table.decide(&eng, "home").map(|d| d.2),
            Some("eng-anywhere")
        );
        assert_eq!(table.decide(&none, "office").map(|d| d.2), Some("office"));
        let other = table.decide(&none, "home").expect("otherwise");
        assert_eq!((other.0, other.2), (MatchedRow::Otherwise, "default"));
        let closed = AssignmentTable {
            rows: table.rows.clone(),
            otherwise: None,
        };
        assert!(closed.decide(&none, "home").is_none(), "no row, no access");
    }

    /// A user as the directory describes them: group DNs, and the names (CNs) taken from them
    /// (by splitting at the first `,`: enough for the unescaped DNs given here).
    fn member_of(dns: &[&str]) -> UserGroups {
        let names: Vec<String> = dns
            .iter()
            .map(|dn| {
                let first = dn.split(',').next().unwrap_or_default();
                first
                    .split_once('=')
                    .map_or("", |(_, v)| v)
                    .trim()
                    .to_string()
            })
            .collect();
        let dns: Vec<String> = dns.iter().map(|d| d.to_string()).collect();
        UserGroups::new(&names, &dns)
    }

    #[test]
    fn a_row_naming_a_dn_matches_only_that_group() {
        let table = AssignmentTable {
            rows: vec![row(
                Some("cn=Admins,ou=Groups,dc=example,dc=com"),
                None,
                "admin",
            )],
            otherwise: Some(("user".into(), "default".into())),
        };
        let decided = |user: &UserGroups| table.decide(user, "office").map(|d| (d.0, d.2));
        // The admins group itself, however the directory spells its DN.
        for spelling in [
            "cn=Admins,ou=Groups,dc=example,dc=com",
            "CN=admins,OU=GROUPS,DC=Example,DC=Com",
            "cn = Admins , ou=Groups,dc=example, dc=com",
            "cn=\\41dmins,ou=Groups,dc=example,dc=com",
        ] {
            assert_eq!(
                decided(&member_of(&["cn=staff,dc=example,dc=com", spelling])),
                Some((MatchedRow::Row(0), "admin")),
                "{spelling}"
            );
        }
        // A group of the same name elsewhere (a delegated OU, say) is not that group.
        for elsewhere in [
            "cn=Admins,ou=Helpdesk,dc=example,dc=com",
            "cn=Admins,ou=Groups,dc=example,dc=org",
            "cn=Admins,ou=Groups,ou=Groups,dc=example,dc=com",
            "cn=Admins\\,ou=Groups,dc=example,dc=com",
            "cn=Admins+ou=Groups,dc=example,dc=com",
        ] {
            // Whatever name the directory reports for it.
            let user = UserGroups::new(&["admins".to_string()], &[elsewhere.to_string()]);
            assert_eq!(
                decided(&user),
                Some((MatchedRow::Otherwise, "default")),
                "{elsewhere}"
            );
        }
        // The name alone (the older form) still matches any group of that name.
        let by_name = AssignmentTable {
            rows: vec![row(Some("ADMINS"), None, "admin")],
            otherwise: None,
        };
        let helpdesk = member_of(&["cn=Admins,ou=Helpdesk,dc=example,dc=com"]);
        assert_eq!(
            by_name.decide(&helpdesk, "office").map(|d| d.2),
            Some("admin")
        );
        // A row whose DN does not parse matches nobody, not everybody.
        let broken = AssignmentTable {
            rows: vec![row(Some("cn=Admins,,dc=com"), None, "admin")],
            otherwise: None,
        };
        assert!(
            broken
                .decide(&member_of(&["cn=Admins,dc=com"]), "office")
                .is_none()
        );
    }

    #[test]
    fn a_group_with_equals_that_is_no_dn_is_refused() {
        let table = AssignmentTable {
            rows: vec![
                row(Some("cn=Admins,ou=Groups,dc=example,dc=com"), None, "p"),
                row(Some("Domain Admins"), None, "p"),
                row(Some("cn=Admins,,dc=example"), None, "p"),
                row(None, None, "p"),
                row(Some("R&D=EMEA"), None, "p"),
            ],
            otherwise: None,
        };
        let errors = table.validate(|_, _| true);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["rows[2].group", "rows[4].group"], "{errors:?}");
        assert!(
            errors[0].reason.contains("is not a distinguished name")
                && errors[0].reason.contains("empty"),
            "{errors:?}"
        );
        assert!(errors[1].reason.contains("`R&D`"), "{errors:?}");
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
