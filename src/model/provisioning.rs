//! A pool's provisioning settings: when the pool grows (fewer than `start_below` unassigned
//! desktops) and up to where (`stop_at` desktops in all), how new machines are named
//! (`{SEQUENCE}`, zero-padded) and what they are made of, plus the status the provisioning
//! runs leave on it (failures in a row, why it turned itself off, the last run).
//!
//! Owns the naming, the NetBIOS host-name check for domain joins, the counting rule (how many
//! machines a run may still create) and the settings' validation. Pure: the runs themselves
//! live in `centers::provision`; the center's existence and the licence are checked where the
//! store and the licence are known.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::FieldError;
use super::Protocol;
use super::desktop::{Desktop, DesktopInput, PowerState};

/// The placeholder a name is numbered with.
pub const SEQUENCE: &str = "{SEQUENCE}";
/// The longest NetBIOS computer name.
pub const NETBIOS_MAX: usize = 15;
/// The widest sequence number, in digits.
pub const MAX_WIDTH: u32 = 9;
/// How long a new machine's first build may take before it counts as a failed one (it is then
/// deleted, as a build that ends in ERROR is).
pub const BUILD_TIMEOUT: chrono::TimeDelta = chrono::TimeDelta::minutes(30);

/// How a pool provisions new desktops in a cloud center.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Provisioning {
    pub enabled: bool,
    /// Provision while the pool has fewer unassigned desktops than this.
    pub start_below: u32,
    /// Never let the pool's desktops (those being created included) exceed this.
    pub stop_at: u32,
    /// The center (id) machines are created in (none chosen: empty, or null from a form).
    #[serde(deserialize_with = "null_as_empty")]
    pub center: String,
    /// The machine's name, with `{SEQUENCE}` where its number goes.
    pub name: String,
    /// The desktop's display name (may use `{SEQUENCE}`); empty: the name.
    pub display_name: String,
    pub sequence_start: u32,
    /// The number is zero-padded to this many digits.
    pub sequence_width: u32,
    /// Empty: the cloud's default zone.
    pub availability_zone: String,
    /// Flavor id.
    pub flavor: String,
    /// Image id.
    pub image: String,
    pub new_volume: NewVolume,
    /// Network ids; empty: no network.
    pub networks: Vec<String>,
    /// Security group names or ids; empty: the project's default group.
    pub security_groups: Vec<String>,
    /// Given as a map, or as `key=value` lines (the console's form).
    #[serde(deserialize_with = "metadata_map")]
    pub metadata: BTreeMap<String, String>,
    /// Newly provisioned desktops are marked deletable.
    pub deletable: bool,
    /// The domain new machines join (for the desktop agent); empty: none. The host names must
    /// then be valid NetBIOS names.
    pub join_domain: String,
    /// Failures in a row after which provisioning turns itself off.
    pub failure_limit: u32,
    /// Status: failures in a row (kept by the runs, not by edits).
    pub failures: u32,
    /// Status: the cloud's error when provisioning turned itself off.
    pub disabled_reason: Option<String>,
    /// Status: when a run last did something or found nothing to do.
    pub last_run: Option<DateTime<Utc>>,
    /// Status: what the last run did, or why it did nothing.
    pub last_result: String,
}

/// Boot from a new volume made from the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewVolume {
    pub enabled: bool,
    pub size_gb: u32,
    /// Empty: the cloud's default type.
    pub volume_type: String,
    pub delete_on_termination: bool,
}

impl Default for NewVolume {
    fn default() -> Self {
        NewVolume {
            enabled: false,
            size_gb: 20,
            volume_type: String::new(),
            delete_on_termination: true,
        }
    }
}

impl Default for Provisioning {
    fn default() -> Self {
        Provisioning {
            enabled: false,
            start_below: 1,
            stop_at: 10,
            center: String::new(),
            name: format!("vdi-{SEQUENCE}"),
            display_name: String::new(),
            sequence_start: 1,
            sequence_width: 3,
            availability_zone: String::new(),
            flavor: String::new(),
            image: String::new(),
            new_volume: NewVolume::default(),
            networks: Vec::new(),
            security_groups: Vec::new(),
            metadata: BTreeMap::new(),
            deletable: true,
            join_domain: String::new(),
            failure_limit: 3,
            failures: 0,
            disabled_reason: None,
            last_run: None,
            last_result: String::new(),
        }
    }
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

fn metadata_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Map(BTreeMap<String, String>),
        Lines(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::Map(m) => m,
        Either::Lines(lines) => lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
                None => (l.trim().to_string(), String::new()),
            })
            .collect(),
    })
}

/// `template` with `{SEQUENCE}` replaced by `n`, zero-padded to `width` digits.
pub fn sequence_name(template: &str, n: u64, width: u32) -> String {
    let width = width.min(MAX_WIDTH) as usize;
    template.replace(SEQUENCE, &format!("{n:0width$}"))
}

/// Why `name` cannot be a NetBIOS computer name (what a domain join needs), if so.
pub fn netbios_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the host name is empty".into());
    }
    if name.chars().count() > NETBIOS_MAX {
        return Some(format!(
            "`{name}` is {} characters long: a computer joining a domain has at most {NETBIOS_MAX}",
            name.chars().count()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Some(format!(
            "`{name}` contains `{c}`: a computer joining a domain may use letters, digits and `-` only"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some(format!("`{name}` starts or ends with `-`"));
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        return Some(format!("`{name}` is only digits"));
    }
    None
}

/// The counting rule: how many more machines a run may create now, for a pool holding `total`
/// desktops (those being created included), `unassigned` of them unassigned. It creates while
/// unassigned < start_below and total < stop_at, each new machine adding one to both.
pub fn to_create(total: u32, unassigned: u32, start_below: u32, stop_at: u32) -> u32 {
    let below = start_below.saturating_sub(unassigned);
    let room = stop_at.saturating_sub(total);
    below.min(room)
}

impl Provisioning {
    /// The machine name for sequence number `n`.
    pub fn name_for(&self, n: u64) -> String {
        sequence_name(self.name.trim(), n, self.sequence_width)
    }

    /// The display name for sequence number `n` (the name when none is set).
    pub fn display_name_for(&self, n: u64) -> String {
        if self.display_name.trim().is_empty() {
            self.name_for(n)
        } else {
            sequence_name(self.display_name.trim(), n, self.sequence_width)
        }
    }

    /// The desktop stored for machine number `n` of pool `pool_id` before the cloud is asked
    /// for it: in its first build, no address and no server yet, so that every count sees it
    /// at once.
    pub fn placeholder(&self, pool_id: &str, n: u64, now: DateTime<Utc>) -> Desktop {
        let mut d = Desktop::from_input(
            DesktopInput {
                name: self.name_for(n),
                display_name: self.display_name_for(n),
                address: String::new(),
                port: None,
                protocol: Protocol::Rdp,
                os: String::new(),
            },
            now,
        );
        d.center = self.center.trim().to_string();
        d.power_state = PowerState::Building;
        d.first_build = Some(pool_id.to_string());
        d.deletable = self.deletable;
        d.metadata = self.metadata.clone();
        d
    }

    /// The sequence numbers whose names validation tries: the first and the last the
    /// thresholds allow.
    pub fn sample_numbers(&self) -> [u64; 2] {
        let start = u64::from(self.sequence_start);
        [start, start + u64::from(self.stop_at)]
    }

    /// What is wrong with the settings themselves (keys `provisioning.<field>`). The
    /// center's existence, the pool's rules and the licence are checked by the callers that
    /// know them. Nothing is checked while provisioning is off, but the numbers.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, reason: String| {
            errors.push(FieldError::new(format!("provisioning.{field}"), reason))
        };
        if self.sequence_width > MAX_WIDTH {
            err(
                "sequence_width",
                format!("the width is at most {MAX_WIDTH} digits"),
            );
        }
        if !self.enabled {
            return errors;
        }
        if self.stop_at < 1 {
            err(
                "stop_at",
                "stop provisioning at 1 desktop or more (0 never provisions)".into(),
            );
        }
        if self.stop_at < self.start_below {
            err(
                "stop_at",
                format!(
                    "the pool stops growing at {} desktops but starts below {} unassigned: make \"stop at\" at least \"start below\"",
                    self.stop_at, self.start_below
                ),
            );
        }
        if self.failure_limit < 1 {
            err("failure_limit", "turn off after 1 failure or more".into());
        }
        let name = self.name.trim();
        if name.is_empty() {
            err("name", "the machine name is empty".into());
        } else if self.stop_at > 1 && !name.contains(SEQUENCE) {
            err(
                "name",
                format!(
                    "the pool may grow to {} machines: put {SEQUENCE} in the name so that each gets its own",
                    self.stop_at
                ),
            );
        } else if name.chars().any(char::is_control) || name.chars().count() > 255 {
            err(
                "name",
                "a machine name has at most 255 characters and no control characters".into(),
            );
        }
        if self.center.trim().is_empty() {
            err("center", "choose the center machines are created in".into());
        }
        if self.flavor.trim().is_empty() {
            err("flavor", "choose a flavor".into());
        }
        if self.image.trim().is_empty() {
            err("image", "choose an image".into());
        }
        if self.new_volume.enabled && self.new_volume.size_gb < 1 {
            err("new_volume.size_gb", "a new volume has 1 GB or more".into());
        }
        if !self.join_domain.trim().is_empty() && !name.is_empty() {
            for n in self.sample_numbers() {
                if let Some(reason) = netbios_problem(&self.name_for(n)) {
                    err(
                        "name",
                        format!("to join {}: {reason}", self.join_domain.trim()),
                    );
                    break;
                }
            }
        }
        errors
    }

    /// The status part of `old` kept over edited settings: failures, why it was turned off,
    /// the last run. Turning provisioning on again (it was off) starts afresh.
    pub fn keep_status(&mut self, old: &Provisioning) {
        if self.enabled && !old.enabled {
            self.failures = 0;
            self.disabled_reason = None;
        } else {
            self.failures = old.failures;
            self.disabled_reason = old.disabled_reason.clone();
        }
        self.last_run = old.last_run;
        self.last_result = old.last_result.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> Provisioning {
        Provisioning {
            enabled: true,
            center: "c".into(),
            flavor: "f".into(),
            image: "i".into(),
            ..Provisioning::default()
        }
    }

    #[test]
    fn names_are_numbered_and_zero_padded() {
        let p = Provisioning {
            name: "gh-{SEQUENCE}".into(),
            display_name: "Desk {SEQUENCE} of {SEQUENCE}".into(),
            sequence_width: 3,
            ..enabled()
        };
        assert_eq!(p.name_for(1), "gh-001");
        assert_eq!(p.name_for(42), "gh-042");
        assert_eq!(p.name_for(1234), "gh-1234", "wider numbers are not cut");
        assert_eq!(p.display_name_for(7), "Desk 007 of 007");
        let plain = Provisioning {
            display_name: String::new(),
            sequence_width: 0,
            ..p
        };
        assert_eq!(plain.display_name_for(5), "gh-5");
        assert_eq!(sequence_name("x", 3, 2), "x");
    }

    #[test]
    fn netbios_names_are_short_and_plain() {
        assert_eq!(netbios_problem("VDI-001"), None);
        assert_eq!(netbios_problem("abcdefghijklmno"), None);
        let long = netbios_problem("abcdefghijklmnop").expect("16 characters");
        assert!(
            long.contains("16 characters") && long.contains("15"),
            "{long}"
        );
        assert!(
            netbios_problem("vdi_001")
                .expect("underscore")
                .contains("`_`")
        );
        assert!(netbios_problem("vdi.001").is_some());
        assert!(netbios_problem("-vdi").is_some());
        assert!(netbios_problem("12345").is_some());
        assert!(netbios_problem("").is_some());
    }

    #[test]
    fn the_counting_rule_never_passes_stop_at() {
        // start_below 2, stop_at 4.
        assert_eq!(to_create(0, 0, 2, 4), 2);
        assert_eq!(to_create(2, 0, 2, 4), 2);
        assert_eq!(to_create(3, 0, 2, 4), 1, "only one more fits");
        assert_eq!(to_create(4, 0, 2, 4), 0);
        assert_eq!(to_create(9, 0, 2, 4), 0, "already past: nothing");
        assert_eq!(to_create(2, 2, 2, 4), 0, "enough unassigned");
        assert_eq!(to_create(3, 1, 2, 4), 1);
        // Every total and unassigned count: the result never takes the total past stop_at.
        for total in 0..10 {
            for unassigned in 0..=total {
                let n = to_create(total, unassigned, 2, 4);
                assert!(n == 0 || total + n <= 4, "{total}/{unassigned}");
                assert!(unassigned + n <= 2 || n == 0);
            }
        }
    }

    #[test]
    fn validation_names_each_field() {
        let p = Provisioning {
            start_below: 5,
            stop_at: 3,
            name: "vdi".into(),
            center: String::new(),
            failure_limit: 0,
            ..enabled()
        };
        let fields: Vec<String> = p.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "provisioning.stop_at",
                "provisioning.failure_limit",
                "provisioning.name",
                "provisioning.center"
            ]
        );
        let zero = Provisioning {
            start_below: 0,
            stop_at: 0,
            ..enabled()
        };
        assert!(zero.validate()[0].reason.contains("1 desktop or more"));
        // One machine needs no sequence.
        let one = Provisioning {
            start_below: 1,
            stop_at: 1,
            name: "kiosk".into(),
            ..enabled()
        };
        assert!(one.validate().is_empty(), "{:?}", one.validate());
        // Off: only the numbers are looked at.
        let off = Provisioning {
            enabled: false,
            ..p
        };
        assert!(off.validate().is_empty());
    }

    #[test]
    fn a_domain_join_needs_netbios_names() {
        let p = Provisioning {
            name: "engineering-desk-{SEQUENCE}".into(),
            join_domain: "corp.example.com".into(),
            ..enabled()
        };
        let errors = p.validate();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "provisioning.name");
        assert!(errors[0].reason.contains("to join corp.example.com"));
        let short = Provisioning {
            name: "eng-{SEQUENCE}".into(),
            ..p
        };
        assert!(short.validate().is_empty());
    }

    #[test]
    fn status_survives_edits_and_a_new_start_clears_it() {
        let old = Provisioning {
            enabled: false,
            failures: 3,
            disabled_reason: Some("flavor not found".into()),
            last_result: "off".into(),
            ..enabled()
        };
        let mut edited = Provisioning {
            enabled: false,
            ..Provisioning::default()
        };
        edited.keep_status(&old);
        assert_eq!(edited.failures, 3);
        assert_eq!(edited.disabled_reason.as_deref(), Some("flavor not found"));
        let mut again = enabled();
        again.keep_status(&old);
        assert_eq!((again.failures, again.disabled_reason), (0, None));
        assert_eq!(again.last_result, "off");
    }

    #[test]
    fn metadata_comes_as_a_map_or_as_lines() {
        let p: Provisioning =
            serde_json::from_str(r#"{"metadata": ["dept = sales", "", "flag"]}"#).expect("lines");
        assert_eq!(p.metadata["dept"], "sales");
        assert_eq!(p.metadata["flag"], "");
        let q: Provisioning = serde_json::from_str(r#"{"metadata": {"a": "b"}}"#).expect("map");
        assert_eq!(q.metadata["a"], "b");
        let none: Provisioning =
            serde_json::from_str(r#"{"center": null}"#).expect("no center chosen");
        assert_eq!(none.center, "");
        let d: Provisioning = serde_json::from_str("{}").expect("defaults");
        assert_eq!(d, Provisioning::default());
        assert!(d.deletable && d.failure_limit == 3);
    }
}
