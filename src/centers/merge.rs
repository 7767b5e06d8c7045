//! How one center's inventory changes the stored desktops: which desktop is which server,
//! what is new, what is gone, and which new servers cannot become desktops (a name taken by
//! another desktop). Pure: [`plan`] reads desktops and an inventory and says what to write.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::model::Protocol;
use crate::model::desktop::{Desktop, name_key};
use crate::openstack::{DesktopFields, Inventory};

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
}

/// The plan for center `center_id`: `desktops` are all stored desktops (every center's: names
/// are unique across them); `building` are servers this appliance is creating right now,
/// which a listing may not show yet and which must not be taken for gone.
pub fn plan(
    center_id: &str,
    desktops: &[Desktop],
    inventory: &Inventory,
    building: &HashSet<String>,
    now: DateTime<Utc>,
) -> Plan {
    let mine: HashMap<&str, &Desktop> = desktops
        .iter()
        .filter(|d| d.center == center_id && !d.server_id.is_empty())
        .map(|d| (d.server_id.as_str(), d))
        .collect();
    let mut names: HashSet<String> = desktops.iter().map(|d| name_key(&d.name)).collect();
    let mut out = Plan::default();
    let mut seen = HashSet::new();
    for server in &inventory.servers {
        seen.insert(server.id.as_str());
        let fields = inventory.desktop_fields(server);
        match mine.get(server.id.as_str()) {
            Some(desktop) => out.updates.push((desktop.id.clone(), fields)),
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
                    .push(fields.new_desktop(center_id, Protocol::Rdp, now));
            }
        }
    }
    for (server_id, desktop) in mine {
        // A machine this appliance is creating may not be listed yet: it is not gone.
        if !seen.contains(server_id) && !building.contains(server_id) {
            out.gone.push(desktop.clone());
        }
    }
    out.gone.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::desktop::PowerState;
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
        let plan = plan("c1", &desktops, &inv, &HashSet::new(), Utc::now());
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
        let plan = plan("c1", &desktops, &inv, &creating, Utc::now());
        assert!(plan.added.is_empty());
        assert_eq!(plan.skipped.len(), 1, "{:?}", plan.skipped);
        assert!(plan.skipped[0].contains("already exists"));
        assert!(plan.gone.is_empty(), "{:?}", plan.gone);
    }
}
