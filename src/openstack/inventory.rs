//! The inventory of one center: everything a refresh reads from the cloud in one go, and
//! how an inventoried server reads as a [`Desktop`]'s fields.
//!
//! Merging the inventory into the stored desktops (which desktop is which server, names that
//! clash, servers that are gone) is the caller's: this module only says what the cloud holds.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::cinder::VolumeType;
use super::client::Cloud;
use super::error::Result;
use super::glance::Image;
use super::neutron::{Network, SecurityGroup};
use super::nova::{Flavor, Server, Zone};
use crate::model::Protocol;
use crate::model::center::Center;
use crate::model::desktop::{AgentState, Desktop, PowerState};
use crate::model::new_id;

/// What one center's cloud holds for its project.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inventory {
    pub servers: Vec<Server>,
    pub images: Vec<Image>,
    pub flavors: Vec<Flavor>,
    pub zones: Vec<Zone>,
    pub networks: Vec<Network>,
    pub security_groups: Vec<SecurityGroup>,
    /// Empty when the cloud has no block storage.
    pub volume_types: Vec<VolumeType>,
    /// Parts that could not be read without making the whole inventory fail (block storage).
    pub warnings: Vec<String>,
    pub taken_at: DateTime<Utc>,
}

/// The fields of a [`Desktop`] an inventoried server determines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesktopFields {
    /// Nova's id of the server: what links a desktop to its server across refreshes.
    pub server_id: String,
    pub name: String,
    /// See [`Server::preferred_address`]; `None` for a server without an address (yet).
    pub address: Option<String>,
    pub power_state: PowerState,
    /// The image's name (its id when the image is gone or nameless; empty when booted from a
    /// volume).
    pub image: String,
    /// The flavor's name.
    pub flavor: String,
    /// The image's `os_distro` (or `os_type`) property, empty when not set.
    pub os: String,
    pub metadata: BTreeMap<String, String>,
    pub created: Option<DateTime<Utc>>,
}

impl DesktopFields {
    /// Sets what the cloud owns on a stored desktop (power state, address when known, image,
    /// flavor, OS when known, metadata); names, assignment and protocol stay. A state other
    /// than building ends the desktop's first build.
    pub fn apply(&self, desktop: &mut Desktop) {
        // A provisioned machine whose create answer was lost is linked to its server here.
        if desktop.server_id.is_empty() {
            desktop.server_id = self.server_id.clone();
        }
        desktop.power_state = self.power_state;
        if self.power_state != PowerState::Building {
            desktop.first_build = None;
        }
        if let Some(address) = &self.address {
            desktop.address = address.clone();
        }
        desktop.image = self.image.clone();
        desktop.flavor = self.flavor.clone();
        if !self.os.is_empty() {
            desktop.os = self.os.clone();
        }
        desktop.metadata = self.metadata.clone();
    }

    /// A new desktop of center `center_id` for a server not stored yet. Its address is empty
    /// when the server has none: such a desktop is not valid until one appears.
    pub fn new_desktop(&self, center_id: &str, protocol: Protocol, now: DateTime<Utc>) -> Desktop {
        let mut desktop = Desktop {
            id: new_id(),
            name: self.name.clone(),
            display_name: self.name.clone(),
            address: String::new(),
            port: None,
            protocol,
            os: String::new(),
            center: center_id.to_string(),
            power_state: PowerState::Unknown,
            agent_state: AgentState::Unknown,
            image: String::new(),
            flavor: String::new(),
            metadata: BTreeMap::new(),
            assigned_user: None,
            assigned_at: None,
            last_released: None,
            deletable: false,
            server_id: self.server_id.clone(),
            first_build: None,
            created: self.created.unwrap_or(now),
        };
        self.apply(&mut desktop);
        desktop
    }
}

impl Inventory {
    /// How `server` reads as a desktop, with image and flavor names looked up here.
    pub fn desktop_fields(&self, server: &Server) -> DesktopFields {
        let image = server.image_id.as_deref().map(|id| {
            self.images
                .iter()
                .find(|i| i.id == id)
                .filter(|i| !i.name.is_empty())
                .map_or_else(|| id.to_string(), |i| i.name.clone())
        });
        let os = server
            .image_id
            .as_deref()
            .and_then(|id| self.images.iter().find(|i| i.id == id))
            .and_then(|i| i.os_distro.clone().or_else(|| i.os_type.clone()))
            .unwrap_or_default();
        let flavor = server
            .flavor_name
            .clone()
            .or_else(|| {
                let id = server.flavor_id.as_deref()?;
                self.flavors
                    .iter()
                    .find(|f| f.id == id)
                    .map(|f| f.name.clone())
            })
            .or_else(|| server.flavor_id.clone())
            .unwrap_or_default();
        DesktopFields {
            server_id: server.id.clone(),
            name: server.name.clone(),
            address: server.preferred_address().map(|a| a.to_string()),
            power_state: server.power_state,
            image: image.unwrap_or_default(),
            flavor,
            os,
            metadata: server.metadata.clone(),
            created: server.created,
        }
    }

    /// The servers' flavor ids, filled in from the flavor names of the 2.47+ server view.
    fn fill_flavor_ids(&mut self) {
        for server in &mut self.servers {
            if server.flavor_id.is_none()
                && let Some(name) = &server.flavor_name
                && let Some(f) = self.flavors.iter().find(|f| &f.name == name)
            {
                server.flavor_id = Some(f.id.clone());
            }
        }
    }
}

impl Cloud {
    /// Reads everything at once (the calls run side by side). Block storage failing is a
    /// warning, not a failure: desktops can be listed without it.
    pub async fn inventory(&self) -> Result<Inventory> {
        // Log in first, so that the parallel calls share one token.
        self.token().await?;
        let (servers, images, flavors, zones, networks, security_groups, volume_types) = tokio::join!(
            self.servers(),
            self.images(),
            self.flavors(),
            self.zones(),
            self.networks(),
            self.security_groups(),
            self.volume_types(),
        );
        let mut warnings = Vec::new();
        let volume_types = volume_types.unwrap_or_else(|e| {
            warnings.push(format!("the volume types could not be read: {e}"));
            Vec::new()
        });
        let mut inventory = Inventory {
            servers: servers?,
            images: images?,
            flavors: flavors?,
            zones: zones?,
            networks: networks?,
            security_groups: security_groups?,
            volume_types,
            warnings,
            taken_at: Utc::now(),
        };
        inventory.fill_flavor_ids();
        Ok(inventory)
    }
}

/// Logs in to the center's cloud and reads its inventory (a one-off [`Cloud`]; keep a `Cloud`
/// to reuse its token between refreshes).
pub async fn inventory(center: &Center) -> Result<Inventory> {
    Cloud::new(center)?.inventory().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::desktop::STATIC_CENTER;
    use crate::openstack::nova::{Address, AddressKind};

    fn inventory() -> Inventory {
        Inventory {
            servers: Vec::new(),
            images: vec![Image {
                id: "img1".into(),
                name: "Ubuntu 24.04".into(),
                status: "active".into(),
                visibility: "public".into(),
                size_bytes: None,
                min_disk_gb: 0,
                min_ram_mb: 0,
                disk_format: None,
                os_distro: Some("ubuntu".into()),
                os_type: None,
                created: None,
            }],
            flavors: vec![Flavor {
                id: "f1".into(),
                name: "m1.small".into(),
                vcpus: 1,
                ram_mb: 2048,
                disk_gb: 20,
                ephemeral_gb: 0,
                is_public: true,
                description: None,
            }],
            zones: Vec::new(),
            networks: Vec::new(),
            security_groups: Vec::new(),
            volume_types: Vec::new(),
            warnings: Vec::new(),
            taken_at: Utc::now(),
        }
    }

    fn server() -> Server {
        let mut addresses = BTreeMap::new();
        addresses.insert(
            "private".to_string(),
            vec![Address {
                addr: "10.0.0.7".parse().expect("ip"),
                kind: AddressKind::Fixed,
                mac: None,
            }],
        );
        Server {
            id: "srv-1".into(),
            name: "pc-07".into(),
            status: "SHUTOFF".into(),
            task_state: None,
            power_state: PowerState::Stopped,
            addresses,
            flavor_id: None,
            flavor_name: Some("m1.small".into()),
            image_id: Some("img1".into()),
            availability_zone: Some("nova".into()),
            metadata: BTreeMap::from([("dept".to_string(), "sales".to_string())]),
            created: None,
            fault: None,
        }
    }

    #[test]
    fn a_server_reads_as_desktop_fields_with_names_looked_up() {
        let mut inv = inventory();
        inv.servers.push(server());
        inv.fill_flavor_ids();
        assert_eq!(inv.servers[0].flavor_id.as_deref(), Some("f1"));

        let fields = inv.desktop_fields(&inv.servers[0]);
        assert_eq!(fields.server_id, "srv-1");
        assert_eq!(fields.address.as_deref(), Some("10.0.0.7"));
        assert_eq!(fields.image, "Ubuntu 24.04");
        assert_eq!(fields.flavor, "m1.small");
        assert_eq!(fields.os, "ubuntu");
        assert_eq!(fields.power_state, PowerState::Stopped);

        let now = Utc::now();
        let desktop = fields.new_desktop("c1", Protocol::Rdp, now);
        assert_eq!(desktop.center, "c1");
        assert_eq!(desktop.name, "pc-07");
        assert_eq!(desktop.address, "10.0.0.7");
        assert_eq!(desktop.metadata["dept"], "sales");
        assert_eq!(desktop.created, now);
        assert!(!desktop.deletable);
        assert!(desktop.validate().is_empty(), "{:?}", desktop.validate());
        assert!(!desktop.is_available(), "a stopped desktop is not offered");
    }

    #[test]
    fn apply_keeps_what_gatehouse_owns() {
        let inv = inventory();
        let mut s = server();
        s.image_id = Some("gone".into());
        s.addresses.clear();
        s.power_state = PowerState::Running;
        let fields = inv.desktop_fields(&s);
        assert_eq!(fields.image, "gone", "an unknown image shows its id");
        assert_eq!(fields.address, None);

        let mut desktop = fields.new_desktop(STATIC_CENTER, Protocol::Vnc, Utc::now());
        desktop.address = "10.9.9.9".into();
        desktop.assigned_user = Some("alice".into());
        desktop.display_name = "Alice's PC".into();
        desktop.os = "Windows".into();
        fields.apply(&mut desktop);
        assert_eq!(desktop.address, "10.9.9.9", "no address known: kept");
        assert_eq!(desktop.assigned_user.as_deref(), Some("alice"));
        assert_eq!(desktop.display_name, "Alice's PC");
        assert_eq!(desktop.os, "Windows", "no OS property: kept");
        assert_eq!(desktop.power_state, PowerState::Running);
    }
}
