//! Roles: what a user may do with their desktop, and how much of the console they see.
//!
//! What it owns: [`Role`] (tree `role_by_id`) with its console access per [`Area`] and its user
//! permissions, the three built-in roles (Administrator, User, Auditor) with fixed ids, and the
//! rules that keep the built-ins in place (no renaming, no deleting).
//!
//! It must not touch: I/O, the store, HTTP types, or the decision of which role a user gets
//! (that is an assignment, decided in the broker).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::FieldError;
use crate::store::Record;

/// What can go wrong while reading role data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("`{0}` is not a console area (dashboard, setup, configuration, resources or system)")]
    UnknownArea(String),
    #[error("`{0}` is not a console access level (none, view or edit)")]
    UnknownAccess(String),
}

pub type Result<T, E = RoleError> = std::result::Result<T, E>;

/// The areas of the administration console, as its menu shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Area {
    Dashboard,
    Setup,
    Configuration,
    Resources,
    System,
}

impl Area {
    pub const ALL: [Area; 5] = [
        Area::Dashboard,
        Area::Setup,
        Area::Configuration,
        Area::Resources,
        Area::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Area::Dashboard => "dashboard",
            Area::Setup => "setup",
            Area::Configuration => "configuration",
            Area::Resources => "resources",
            Area::System => "system",
        }
    }

    /// The menu label.
    pub fn label(self) -> &'static str {
        match self {
            Area::Dashboard => "Dashboard",
            Area::Setup => "Setup",
            Area::Configuration => "Configuration",
            Area::Resources => "Resources",
            Area::System => "System",
        }
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Area {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Area> {
        let t = s.trim();
        Area::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| RoleError::UnknownArea(t.to_string()))
    }
}

/// How much of one console area a role sees. Ordered: `None < View < Edit`, and `Edit`
/// includes `View`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// The area is hidden.
    #[default]
    None,
    /// Pages can be read, nothing can be changed.
    View,
    /// Pages can be read and changed.
    Edit,
}

impl Access {
    pub const ALL: [Access; 3] = [Access::None, Access::View, Access::Edit];

    pub fn as_str(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::View => "view",
            Access::Edit => "edit",
        }
    }

    /// Whether this level is enough for something that needs `needed`.
    pub fn allows(self, needed: Access) -> bool {
        self >= needed
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Access {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Access> {
        let t = s.trim();
        Access::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| RoleError::UnknownAccess(t.to_string()))
    }
}

/// The built-in roles' fixed ids.
pub const ADMINISTRATOR_ROLE_ID: &str = "administrator";
pub const USER_ROLE_ID: &str = "user";
pub const AUDITOR_ROLE_ID: &str = "auditor";

const BUILT_IN: [(&str, &str); 3] = [
    (ADMINISTRATOR_ROLE_ID, "Administrator"),
    (USER_ROLE_ID, "User"),
    (AUDITOR_ROLE_ID, "Auditor"),
];

const MAX_NAME_LEN: usize = 100;

/// What a user may do, and how much of the console they see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub id: String,
    pub name: String,
    /// One of the three roles every installation has; cannot be renamed or deleted.
    #[serde(default)]
    pub built_in: bool,
    /// Access per console area; an area missing from the map is [`Access::None`].
    #[serde(default)]
    pub console: BTreeMap<Area, Access>,
    /// May give their desktop back to the pool.
    #[serde(default)]
    pub may_release: bool,
    /// May restart (reboot) their desktop.
    #[serde(default)]
    pub may_restart: bool,
    /// May power their desktop off.
    #[serde(default)]
    pub may_shut_down: bool,
    /// May connect to the desktops their policy offers.
    #[serde(default)]
    pub may_connect: bool,
}

impl Record for Role {
    const TREE: &'static str = "role_by_id";
}

fn console_all(access: Access) -> BTreeMap<Area, Access> {
    Area::ALL.into_iter().map(|a| (a, access)).collect()
}

impl Role {
    /// Edit everywhere, every user permission.
    pub fn administrator() -> Role {
        Role {
            id: ADMINISTRATOR_ROLE_ID.to_string(),
            name: "Administrator".to_string(),
            built_in: true,
            console: console_all(Access::Edit),
            may_release: true,
            may_restart: true,
            may_shut_down: true,
            may_connect: true,
        }
    }

    /// No console; may connect to and release their desktop.
    pub fn user() -> Role {
        Role {
            id: USER_ROLE_ID.to_string(),
            name: "User".to_string(),
            built_in: true,
            console: console_all(Access::None),
            may_release: true,
            may_restart: false,
            may_shut_down: false,
            may_connect: true,
        }
    }

    /// Sees the whole console and changes nothing; may connect.
    pub fn auditor() -> Role {
        Role {
            id: AUDITOR_ROLE_ID.to_string(),
            name: "Auditor".to_string(),
            built_in: true,
            console: console_all(Access::View),
            may_release: false,
            may_restart: false,
            may_shut_down: false,
            may_connect: true,
        }
    }

    /// A new administrator-made role that may do nothing until granted.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Role {
        Role {
            id: id.into(),
            name: name.into(),
            built_in: false,
            console: console_all(Access::None),
            may_release: false,
            may_restart: false,
            may_shut_down: false,
            may_connect: false,
        }
    }

    /// How much of `area` this role sees.
    pub fn console_access(&self, area: Area) -> Access {
        self.console.get(&area).copied().unwrap_or_default()
    }

    /// Whether this role reaches `area` at level `needed` or above.
    pub fn allows(&self, area: Area, needed: Access) -> bool {
        self.console_access(area).allows(needed)
    }

    /// Whether this role sees any part of the console.
    pub fn has_console(&self) -> bool {
        Area::ALL
            .into_iter()
            .any(|a| self.console_access(a) != Access::None)
    }

    /// Built-in roles stay.
    pub fn can_delete(&self) -> bool {
        !self.built_in
    }

    /// Built-in roles keep their names.
    pub fn can_rename(&self) -> bool {
        !self.built_in
    }

    /// What is wrong with this role on its own, field by field; empty when it can be saved.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.id.trim().is_empty() {
            errors.push(FieldError::new("id", "a role needs an id"));
        }
        let name = self.name.trim();
        if name.is_empty() {
            errors.push(FieldError::new("name", "give the role a name"));
        } else if name.chars().count() > MAX_NAME_LEN {
            errors.push(FieldError::new(
                "name",
                format!("keep the name to {MAX_NAME_LEN} characters"),
            ));
        }
        let fixed = BUILT_IN.iter().find(|(id, _)| *id == self.id);
        match (self.built_in, fixed) {
            (true, Some((_, fixed_name))) => {
                if self.name != *fixed_name {
                    errors.push(FieldError::new(
                        "name",
                        format!("the built-in role is always called {fixed_name}"),
                    ));
                }
            }
            (true, None) => {
                errors.push(FieldError::new(
                    "built_in",
                    "only Administrator, User and Auditor are built-in roles",
                ));
            }
            (false, Some(_)) => {
                errors.push(FieldError::new(
                    "id",
                    format!("`{}` is a built-in role's id; choose another", self.id),
                ));
            }
            (false, None) => {
                if let Some((_, taken)) =
                    BUILT_IN.iter().find(|(_, n)| n.eq_ignore_ascii_case(name))
                {
                    errors.push(FieldError::new(
                        "name",
                        format!("{taken} is a built-in role's name; choose another"),
                    ));
                }
            }
        }
        errors
    }

    /// What is wrong with saving `self` over `old`, the stored role with the same id: on top
    /// of [`Role::validate`], the id and the built-in flag never change, and built-ins keep
    /// their names.
    pub fn validate_change(&self, old: &Role) -> Vec<FieldError> {
        let mut errors = self.validate();
        if self.id != old.id {
            errors.push(FieldError::new("id", "a role's id cannot change"));
        }
        if self.built_in != old.built_in {
            errors.push(FieldError::new(
                "built_in",
                "whether a role is built in cannot change",
            ));
        }
        if !old.can_rename() && self.name != old.name {
            errors.push(FieldError::new(
                "name",
                format!("the built-in role {} cannot be renamed", old.name),
            ));
        }
        dedup(errors)
    }
}

/// Drops repeated (field, reason) pairs, keeping the first order.
fn dedup(errors: Vec<FieldError>) -> Vec<FieldError> {
    let mut seen = BTreeSet::new();
    errors
        .into_iter()
        .filter(|e| seen.insert((e.field.clone(), e.reason.clone())))
        .collect()
}

/// The three roles every installation has, in menu order.
pub fn built_in() -> [Role; 3] {
    [Role::administrator(), Role::user(), Role::auditor()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_have_fixed_ids_and_names() {
        let roles = built_in();
        let ids: Vec<&str> = roles.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["administrator", "user", "auditor"]);
        let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["Administrator", "User", "Auditor"]);
        for r in &roles {
            assert!(r.built_in);
            assert!(!r.can_delete(), "{} must not be deletable", r.name);
            assert!(!r.can_rename());
            assert!(r.validate().is_empty(), "{}: {:?}", r.name, r.validate());
        }
    }

    #[test]
    fn administrator_edits_everything_and_may_do_everything() {
        let admin = Role::administrator();
        for area in Area::ALL {
            assert_eq!(admin.console_access(area), Access::Edit);
            assert!(admin.allows(area, Access::View));
            assert!(admin.allows(area, Access::Edit));
        }
        assert!(admin.may_connect && admin.may_release && admin.may_restart && admin.may_shut_down);
        assert!(admin.has_console());
    }

    #[test]
    fn user_has_no_console_and_may_connect_and_release() {
        let user = Role::user();
        for area in Area::ALL {
            assert_eq!(user.console_access(area), Access::None);
            assert!(!user.allows(area, Access::View));
            assert!(user.allows(area, Access::None));
        }
        assert!(!user.has_console());
        assert!(user.may_connect && user.may_release);
        assert!(!user.may_restart && !user.may_shut_down);
    }

    #[test]
    fn auditor_views_everything_and_edits_nothing() {
        let auditor = Role::auditor();
        for area in Area::ALL {
            assert_eq!(auditor.console_access(area), Access::View);
            assert!(auditor.allows(area, Access::View));
            assert!(!auditor.allows(area, Access::Edit));
        }
        assert!(auditor.may_connect);
        assert!(!auditor.may_release && !auditor.may_restart && !auditor.may_shut_down);
    }

    #[test]
    fn missing_areas_mean_no_access() {
        let mut r = Role::new("helpdesk", "Helpdesk");
        r.console.clear();
        r.console.insert(Area::Resources, Access::Edit);
        r.console.insert(Area::Dashboard, Access::View);
        assert_eq!(r.console_access(Area::Resources), Access::Edit);
        assert_eq!(r.console_access(Area::Dashboard), Access::View);
        assert_eq!(r.console_access(Area::System), Access::None);
        assert!(!r.allows(Area::Setup, Access::View));
        assert!(r.has_console());
        assert!(r.can_delete() && r.can_rename());
    }

    #[test]
    fn access_is_ordered() {
        assert!(Access::None < Access::View && Access::View < Access::Edit);
        assert!(Access::Edit.allows(Access::View));
        assert!(!Access::View.allows(Access::Edit));
        assert!(!Access::None.allows(Access::View));
    }

    #[test]
    fn areas_and_access_parse_from_forms() {
        assert_eq!(" Resources ".parse::<Area>().unwrap(), Area::Resources);
        assert_eq!("EDIT".parse::<Access>().unwrap(), Access::Edit);
        let err = "billing".parse::<Area>().unwrap_err();
        assert!(err.to_string().contains("`billing` is not a console area"));
        let err = "write".parse::<Access>().unwrap_err();
        assert!(err.to_string().contains("none, view or edit"));
        for a in Area::ALL {
            assert_eq!(a.to_string().parse::<Area>().unwrap(), a);
        }
    }

    #[test]
    fn roles_round_trip_through_json_with_area_keys() {
        let mut r = Role::new("ops", "Operations");
        r.console.insert(Area::System, Access::Edit);
        r.may_restart = true;
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""system":"edit""#), "{json}");
        assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), r);
        let minimal: Role = serde_json::from_str(r#"{"id":"m","name":"M"}"#).unwrap();
        assert_eq!(minimal.console_access(Area::Dashboard), Access::None);
        assert!(!minimal.may_connect && !minimal.built_in);
    }

    #[test]
    fn validation() {
        let mut r = Role::new("", " ");
        let fields: Vec<String> = r.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["id", "name"]);

        r = Role::new("x", "auditor");
        let errors = r.validate();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .reason
                .contains("Auditor is a built-in role's name")
        );

        r = Role::new("user", "Somebody");
        assert_eq!(r.validate()[0].field, "id");

        r = Role::new("x", "X");
        r.built_in = true;
        assert_eq!(r.validate()[0].field, "built_in");

        let mut renamed = Role::administrator();
        renamed.name = "Boss".into();
        assert_eq!(renamed.validate()[0].field, "name");
    }

    #[test]
    fn built_ins_cannot_be_renamed_but_permissions_can_change() {
        let old = Role::user();
        let mut new = old.clone();
        new.may_restart = true;
        new.console.insert(Area::Dashboard, Access::View);
        assert!(new.validate_change(&old).is_empty());

        new.name = "Staff".into();
        let errors = new.validate_change(&old);
        assert!(
            errors
                .iter()
                .any(|e| e.reason.contains("cannot be renamed")),
            "{errors:?}"
        );

        let mut custom = Role::new("ops", "Operations");
        let old_custom = custom.clone();
        custom.name = "Operators".into();
        assert!(custom.validate_change(&old_custom).is_empty());
        custom.built_in = true;
        custom.id = "other".into();
        let fields: Vec<String> = custom
            .validate_change(&old_custom)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert!(fields.contains(&"id".to_string()) && fields.contains(&"built_in".to_string()));
    }
}
