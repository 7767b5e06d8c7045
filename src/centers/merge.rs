//! How one center's inventory changes the stored desktops: which desktop is which server,
//! what is new, what is gone, which new servers cannot become desktops (a name taken by
//! another desktop), and which provisioned machines' first builds failed. Pure: [`plan`]
//! reads desktops and an inventory and says what to write.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::model::center::Center;
use crate::model::desktop::{Desktop, PowerState, name_key};
use crate::model::provisioning::BUILD_TIMEOUT;
use crate::openstack::{DesktopFields, Inventory, Server};

/// What a refresh writes.
#[derive(Debug, Default)]
pub struct Plan {
    /// Stored desktops whose server is still there, with the cloud's fields to set (applied
    /// to the desktop as it stands when written, so an assignment made meanwhile stays).
    pub updates: Vec<(String, DesktopFields)>,
    /// New desktops for servers not stored yet.
    pub added: Vec<Desktop>,
    /// Desktops whose server is gone from the cloud.
    pub gone: Vec<Desktop>,
    /// New servers left out, with the reason.
    pub skipped: Vec<String>,
    /// Provisioned machines whose first build ended in ERROR or took too long.
    pub failed_builds: Vec<FailedBuild>,
    /// Provisioned machines whose first build is over and went well: (pool id, machine name).
    pub built: Vec<(String, String)>,
}

/// A provisioned machine whose first build failed: a failure of its pool's provisioning.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedBuild {
    pub desktop: Desktop,
    /// The pool whose provisioning asked for it.
    pub pool: String,
    /// What went wrong, with the cloud's own fault message when it gave one.
    pub message: String,
}

/// The plan for `center`: `desktops` are all stored desktops (every center's: names are unique
/// across them); `building` are servers this appliance is creating right now, which a listing
/// may not show yet and which must not be taken for gone. New desktops get the center's
/// protocol.
pub fn plan(
    center: &Center,
    desktops: &[Desktop],
    inventory: &Inventory,
    building: &HashSet<String>,
    now: DateTime<Utc>,
) -> Plan {
    let center_id = center.id.as_str();
    let mine: HashMap<&str, &Desktop> = desktops
        .iter()
        .filter(|d| d.center == center_id && !d.server_id.is_empty())
        .map(|d| (d.server_id.as_str(), d))
        .collect();
    // Machines asked for whose server id was never stored (the create's answer was lost to a
    // timeout or a restart): found again by name.
    let mut waiting: HashMap<String, &Desktop> = desktops
        .iter()
        .filter(|d| d.center == center_id && d.server_id.is_empty() && d.first_build.is_some())
        .map(|d| (name_key(&d.name), d))
        .collect();
    let mut names: HashSet<String> = desktops.iter().map(|d| name_key(&d.name)).collect();
    let mut out = Plan::default();
    let mut seen = HashSet::new();
    for server in &inventory.servers {
        seen.insert(server.id.as_str());
        let fields = inventory.desktop_fields(server);
        let known = mine
            .get(server.id.as_str())
            .copied()
            .or_else(|| waiting.remove(&name_key(&server.name)));
        match known {
            Some(desktop) => {
                if let Some(pool) = &desktop.first_build {
                    if let Some(message) = failed_build(desktop, server, now) {
                        let mut desktop = (*desktop).clone();
                        desktop.server_id = server.id.clone();
                        out.failed_builds.push(FailedBuild {
                            desktop,
                            pool: pool.clone(),
                            message,
                        });
                    } else if fields.power_state != PowerState::Building {
                        out.built.push((pool.clone(), server.name.clone()));
                    }
                }
                out.updates.push((desktop.id.clone(), fields));
            }
            None => {
                let key = name_key(&server.name);
                if key.is_empty() {
                    out.skipped
                        .push(format!("server {}: it has no name", server.id));
                    continue;
                }
                if !names.insert(key) {
                    out.skipped.push(format!(
                        "server {} ({}): a desktop with that name already exists",
                        server.name, server.id
                    ));
                    continue;
                }
                out.added
                    .push(fields.new_desktop(center_id, center.protocol, now));
            }
        }
    }
    for (server_id, desktop) in mine {
        // A machine this appliance is creating may not be listed yet: it is not gone.
        if !seen.contains(server_id) && !building.contains(server_id) {
            out.gone.push(desktop.clone());
        }
    }
    // Asked for, never listed, and past the build timeout: the cloud did not make it.
    for desktop in waiting.into_values() {
        if now - desktop.created >= BUILD_TIMEOUT
            && let Some(pool) = &desktop.first_build
        {
            out.failed_builds.push(FailedBuild {
                desktop: desktop.clone(),
                pool: pool.clone(),
                message: format!(
                    "the cloud never listed {} in the {} minutes after it was asked for",
                    desktop.name,
                    BUILD_TIMEOUT.num_minutes()
                ),
            });
        }
    }
    out.gone.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Why the first build of `desktop`'s machine failed, if it did: the server is in ERROR, or
/// still building [`BUILD_TIMEOUT`] after the desktop was stored.
fn failed_build(desktop: &Desktop, server: &Server, now: DateTime<Utc>) -> Option<String> {
    match server.status.as_str() {
        "ERROR" => Some(match server.fault.as_deref().map(str::trim) {
            Some(fault) if !fault.is_empty() => {
                format!("the build of {} ended in ERROR: {fault}", server.name)
            }
            _ => format!(
                "the build of {} ended in ERROR (the cloud gave no reason)",
                server.name
            ),
        }),
        "BUILD" if now - desktop.created >= BUILD_TIMEOUT => Some(format!(
            "{} was still building {} minutes after it was asked for",
            server.name,
            BUILD_TIMEOUT.num_minutes()
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn center(id: &str) -> Center {
        Center {
            id: id.into(),
            ..Center::default()
        }
    }
    use crate::openstack::{Address, AddressKind, Server};

    fn inventory(servers: &[(&str, &str)]) -> Inventory {
        let servers = servers
            .iter()
            .map(|(id, name)| Server {
                id: id.to_string(),
                name: name.to_string(),
                status: "ACTIVE".into(),
                task_state: None,
                power_state: PowerState::Running,
                addresses: [(
                    "lan".to_string(),
                    vec![Address {
                        addr: "10.0.0.5".parse().expect("an address"),
                        kind: AddressKind::Fixed,
                        mac: None,
                    }],
                )]
                .into(),
                flavor_id: None,
                flavor_name: Some("m1.small".into()),
                image_id: Some("img".into()),
                availability_zone: Some("nova".into()),
                metadata: Default::default(),
                created: None,
                fault: None,
            })
            .collect();
        Inventory {
            servers,
            images: Vec::new(),
            flavors: Vec::new(),
            zones: Vec::new(),
            networks: Vec::new(),
            security_groups: Vec::new(),
            volume_types: Vec::new(),
            warnings: Vec::new(),
            taken_at: Utc::now(),
        }
    }

    fn stored(name: &str, center: &str, server_id: &str) -> Desktop {
        let inv = inventory(&[(server_id, name)]);
        let mut d =
            inv.desktop_fields(&inv.servers[0])
                .new_desktop(center, Protocol::Rdp, Utc::now());
        d.server_id = server_id.to_string();
        d
    }

    #[test]
    fn servers_are_matched_by_id_new_ones_added_and_missing_ones_gone() {
        let mut kept = stored("vdi-1", "c1", "s1");
        kept.assigned_user = Some("ad/alice".into());
        let gone = stored("vdi-2", "c1", "s2");
        let other_center = stored("vdi-9", "c2", "s9");
        let desktops = vec![kept.clone(), gone.clone(), other_center];
        let inv = inventory(&[("s1", "vdi-1-renamed"), ("s3", "vdi-3")]);
        let plan = plan(&center("c1"), &desktops, &inv, &HashSet::new(), Utc::now());
        assert_eq!(plan.updates.len(), 1);
        assert_eq!(plan.updates[0].0, kept.id);
        assert_eq!(plan.added.len(), 1);
        assert_eq!(plan.added[0].name, "vdi-3");
        assert_eq!(plan.added[0].server_id, "s3");
        assert_eq!(plan.added[0].center, "c1");
        assert_eq!(plan.added[0].address, "10.0.0.5");
        assert_eq!(plan.gone.len(), 1);
        assert_eq!(plan.gone[0].id, gone.id);
        assert!(plan.skipped.is_empty());
    }

    #[test]
    fn a_taken_name_is_skipped_and_a_building_server_is_not_gone() {
        let static_desktop = {
            let mut d = stored("Lab-PC", "static", "");
            d.server_id.clear();
            d
        };
        let building = stored("vdi-7", "c1", "s7");
        let desktops = vec![static_desktop, building];
        let inv = inventory(&[("s8", "lab-pc")]);
        let creating: HashSet<String> = ["s7".to_string()].into();
        let plan = plan(&center("c1"), &desktops, &inv, &creating, Utc::now());
        assert!(plan.added.is_empty());
        assert_eq!(plan.skipped.len(), 1, "{:?}", plan.skipped);
        assert!(plan.skipped[0].contains("already exists"));
        assert!(plan.gone.is_empty(), "{:?}", plan.gone);
    }

    #[test]
    fn a_machine_whose_create_answer_was_lost_is_found_by_name_or_given_up_on() {
        let now = Utc::now();
        let asked = |name: &str, age: chrono::TimeDelta| {
            let mut d = stored(name, "c1", "");
            d.server_id.clear();
            d.first_build = Some("pool-1".into());
            d.power_state = PowerState::Building;
            d.created = now - age;
            d
        };
        let found = asked("vdi-1", chrono::TimeDelta::minutes(2));
        let young = asked("vdi-2", chrono::TimeDelta::minutes(2));
        let lost = asked("vdi-3", BUILD_TIMEOUT);
        let desktops = vec![found.clone(), young, lost.clone()];
        let inv = inventory(&[("s1", "VDI-1")]);
        let plan = plan(&center("c1"), &desktops, &inv, &HashSet::new(), now);
        assert!(plan.added.is_empty() && plan.skipped.is_empty(), "{plan:?}");
        assert_eq!(plan.updates.len(), 1);
        assert_eq!(
            plan.updates[0].0, found.id,
            "the server is the asked-for machine"
        );
        let mut linked = found.clone();
        plan.updates[0].1.apply(&mut linked);
        assert_eq!(linked.server_id, "s1");
        assert_eq!(linked.power_state, PowerState::Running);
        assert_eq!(plan.built, [("pool-1".to_string(), "VDI-1".to_string())]);
        // Not listed: waited for until the build timeout, then a failed build with nothing
        // to delete in the cloud.
        assert_eq!(plan.failed_builds.len(), 1, "{:?}", plan.failed_builds);
        let failed = &plan.failed_builds[0];
        assert_eq!(failed.desktop.id, lost.id);
        assert!(failed.desktop.server_id.is_empty());
        assert_eq!(
            failed.message,
            "the cloud never listed vdi-3 in the 30 minutes after it was asked for"
        );
        assert!(plan.gone.is_empty());
    }

    #[test]
    fn a_first_build_in_error_or_too_long_fails_and_a_finished_one_does_not() {
        let now = Utc::now();
        let first = |name: &str, server: &str, age: chrono::TimeDelta| {
            let mut d = stored(name, "c1", server);
            d.first_build = Some("pool-1".into());
            d.created = now - age;
            d
        };
        let desktops = vec![
            first("vdi-1", "s1", chrono::TimeDelta::minutes(1)),
            first("vdi-2", "s2", chrono::TimeDelta::minutes(1)),
            first("vdi-3", "s3", BUILD_TIMEOUT),
            first("vdi-4", "s4", chrono::TimeDelta::minutes(29)),
            first("vdi-5", "s5", chrono::TimeDelta::hours(2)),
            // Not a first build (inventoried, or built long ago): never a provisioning failure.
            stored("vdi-6", "c1", "s6"),
        ];
        let mut inv = inventory(&[
            ("s1", "vdi-1"),
            ("s2", "vdi-2"),
            ("s3", "vdi-3"),
            ("s4", "vdi-4"),
            ("s5", "vdi-5"),
            ("s6", "vdi-6"),
        ]);
        for i in [0, 1, 5] {
            inv.servers[i].status = "ERROR".into();
            inv.servers[i].power_state = PowerState::Error;
        }
        inv.servers[0].fault = Some("No valid host was found. ".into());
        for s in &mut inv.servers[2..4] {
            s.status = "BUILD".into();
            s.power_state = PowerState::Building;
        }
        let plan = plan(&center("c1"), &desktops, &inv, &HashSet::new(), now);
        let failed: Vec<(&str, &str, &str)> = plan
            .failed_builds
            .iter()
            .map(|f| (f.desktop.name.as_str(), f.pool.as_str(), f.message.as_str()))
            .collect();
        assert_eq!(
            failed,
            [
                (
                    "vdi-1",
                    "pool-1",
                    "the build of vdi-1 ended in ERROR: No valid host was found."
                ),
                (
                    "vdi-2",
                    "pool-1",
                    "the build of vdi-2 ended in ERROR (the cloud gave no reason)"
                ),
                (
                    "vdi-3",
                    "pool-1",
                    "vdi-3 was still building 30 minutes after it was asked for"
                ),
            ]
        );
        // Every server still gets its fields; an ACTIVE one ends the first build.
        assert_eq!(plan.built, [("pool-1".to_string(), "vdi-5".to_string())]);
        assert_eq!(plan.updates.len(), 6);
        let mut built = desktops[4].clone();
        plan.updates[4].1.apply(&mut built);
        assert_eq!(built.first_build, None);
        let mut building = desktops[3].clone();
        plan.updates[3].1.apply(&mut building);
        assert_eq!(building.first_build.as_deref(), Some("pool-1"));
    }

    #[test]
    fn new_desktops_are_reached_with_their_center_s_protocol() {
        let mut spice = center("c1");
        spice.protocol = Protocol::Spice;
        let inv = inventory(&[("s1", "linux-1")]);
        let plan = plan(&spice, &[], &inv, &HashSet::new(), Utc::now());
        assert_eq!(plan.added[0].protocol, Protocol::Spice);
    }
}
