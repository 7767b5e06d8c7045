//! Nova (compute): servers over every page, flavors, availability zones, creating a server
//! (from an image, or on a new volume made from it), power actions and deletion, and how a
//! server's status reads as a desktop's [`PowerState`].
//!
//! Every request names compute microversion [`COMPUTE_API_VERSION`], so the shapes below are
//! the ones of that version whatever the cloud's newest is.

use std::collections::BTreeMap;
use std::net::IpAddr;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::client::Cloud;
use super::error::{Error, Result, Service};
use crate::model::FieldError;
use crate::model::desktop::PowerState;

/// The compute API microversion Gatehouse speaks (Nova 2.79 came with the Train release, 2019):
/// block device mappings with a volume type (2.67), `networks: "none"` (2.37), server views
/// with the flavor embedded (2.47).
pub const COMPUTE_API_VERSION: &str = "2.79";
/// Most pages followed in one listing (a guard against a cloud whose links loop).
pub(crate) const MAX_PAGES: usize = 10_000;
/// Nova's limits on metadata.
pub const MAX_METADATA_ITEMS: usize = 128;
pub const MAX_METADATA_LEN: usize = 255;

/// One instance, as Gatehouse needs it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    /// Nova's status: `ACTIVE`, `BUILD`, `SHUTOFF`, `ERROR`, `SUSPENDED`, `REBOOT`, …
    pub status: String,
    /// What Nova is doing with it now (`powering-off`, `deleting`, …), if anything.
    pub task_state: Option<String>,
    pub power_state: PowerState,
    /// Addresses per network name.
    pub addresses: BTreeMap<String, Vec<Address>>,
    /// `None` in the 2.47+ view, which embeds the flavor's name instead; the inventory fills
    /// it in from the flavor list.
    pub flavor_id: Option<String>,
    pub flavor_name: Option<String>,
    /// `None` for a server booted from a volume.
    pub image_id: Option<String>,
    pub availability_zone: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub created: Option<DateTime<Utc>>,
    /// Why it is in `ERROR`, when Nova says.
    pub fault: Option<String>,
}

/// Whether an address is the instance's own or a floating one mapped onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressKind {
    Fixed,
    Floating,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    pub addr: IpAddr,
    pub kind: AddressKind,
    pub mac: Option<String>,
}

impl Server {
    /// The address a desktop is reached at: a floating IPv4 address, else a fixed IPv4, else
    /// a floating IPv6, else a fixed IPv6 (networks in name order).
    pub fn preferred_address(&self) -> Option<IpAddr> {
        let all: Vec<&Address> = self.addresses.values().flatten().collect();
        let pick = |v4: bool, kind: AddressKind| {
            all.iter()
                .find(|a| a.addr.is_ipv4() == v4 && a.kind == kind)
                .map(|a| a.addr)
        };
        pick(true, AddressKind::Floating)
            .or_else(|| pick(true, AddressKind::Fixed))
            .or_else(|| pick(false, AddressKind::Floating))
            .or_else(|| pick(false, AddressKind::Fixed))
    }
}

/// A flavor: the size of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    pub ram_mb: u64,
    /// 0: the flavor has no root disk of its own (boot from a volume only).
    pub disk_gb: u64,
    pub ephemeral_gb: u64,
    pub is_public: bool,
    pub description: Option<String>,
}

/// An availability zone the project may create instances in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Zone {
    pub name: String,
    pub available: bool,
}

/// Which networks a new server is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Networks {
    /// No network at all.
    None,
    /// Nova picks (or makes) the project's network; needs the cloud's auto-allocation.
    Auto,
    /// One port on each network, by network id.
    Ids(Vec<String>),
}

/// A new volume, made from the image, that the server boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootVolume {
    pub size_gb: u32,
    /// `None`: the cloud's default volume type.
    pub volume_type: Option<String>,
    /// Delete the volume with the server.
    pub delete_on_termination: bool,
}

/// What a new server is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewServer {
    pub name: String,
    /// Flavor id.
    pub flavor: String,
    /// Image id (also the source of a [`BootVolume`]).
    pub image: String,
    /// `None`: the cloud's default zone.
    pub availability_zone: Option<String>,
    pub networks: Networks,
    /// Security group names (or ids); empty: the project's `default` group.
    pub security_groups: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// `None`: boot from the image on the flavor's disk.
    pub boot_volume: Option<BootVolume>,
    /// Cloud-init user data as text (sent base64-encoded).
    pub user_data: Option<String>,
}

impl NewServer {
    /// A server from `image` of `flavor` with no network and nothing else set.
    pub fn new(
        name: impl Into<String>,
        flavor: impl Into<String>,
        image: impl Into<String>,
    ) -> Self {
        NewServer {
            name: name.into(),
            flavor: flavor.into(),
            image: image.into(),
            availability_zone: None,
            networks: Networks::None,
            security_groups: Vec::new(),
            metadata: BTreeMap::new(),
            boot_volume: None,
            user_data: None,
        }
    }

    /// What is wrong with the request; empty when it can be sent.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, reason: String| errors.push(FieldError::new(field, reason));
        let name = self.name.trim();
        if name.is_empty() {
            err("name", "the server name is empty".into());
        } else if name.chars().count() > 255 || name.chars().any(char::is_control) {
            err(
                "name",
                "the server name must be at most 255 characters without control characters".into(),
            );
        }
        if self.flavor.trim().is_empty() {
            err("flavor", "choose a flavor".into());
        }
        if self.image.trim().is_empty() {
            err("image", "choose an image".into());
        }
        if let Networks::Ids(ids) = &self.networks {
            if ids.is_empty() {
                err(
                    "networks",
                    "choose at least one network, or \"none\" for a server without network".into(),
                );
            }
            if ids.iter().any(|id| id.trim().is_empty()) {
                err("networks", "a network id is empty".into());
            }
        }
        if self.security_groups.iter().any(|g| g.trim().is_empty()) {
            err("security_groups", "a security group name is empty".into());
        }
        if self.metadata.len() > MAX_METADATA_ITEMS {
            err(
                "metadata",
                format!("at most {MAX_METADATA_ITEMS} metadata items are allowed"),
            );
        }
        for (k, v) in &self.metadata {
            if k.trim().is_empty() || k.chars().count() > MAX_METADATA_LEN {
                err(
                    "metadata",
                    format!("metadata key `{k}` must be 1 to {MAX_METADATA_LEN} characters"),
                );
            }
            if v.chars().count() > MAX_METADATA_LEN {
                err(
                    "metadata",
                    format!("the value of `{k}` is longer than {MAX_METADATA_LEN} characters"),
                );
            }
        }
        if let Some(volume) = &self.boot_volume {
            if volume.size_gb == 0 {
                err(
                    "boot_volume.size_gb",
                    "the volume size must be at least 1 GB".into(),
                );
            }
            if volume
                .volume_type
                .as_ref()
                .is_some_and(|t| t.trim().is_empty())
            {
                err(
                    "boot_volume.volume_type",
                    "the volume type is empty: choose one or leave it unset".into(),
                );
            }
        }
        errors
    }

    /// The `POST /servers` body.
    pub(crate) fn body(&self) -> Value {
        let mut server = Map::new();
        server.insert("name".into(), json!(self.name.trim()));
        server.insert("flavorRef".into(), json!(self.flavor.trim()));
        match &self.boot_volume {
            None => {
                server.insert("imageRef".into(), json!(self.image.trim()));
            }
            Some(volume) => {
                let mut bdm = json!({
                    "boot_index": 0,
                    "uuid": self.image.trim(),
                    "source_type": "image",
                    "destination_type": "volume",
                    "volume_size": volume.size_gb,
                    "delete_on_termination": volume.delete_on_termination,
                });
                if let Some(t) = &volume.volume_type {
                    bdm["volume_type"] = json!(t.trim());
                }
                server.insert("block_device_mapping_v2".into(), json!([bdm]));
            }
        }
        if let Some(zone) = self
            .availability_zone
            .as_deref()
            .map(str::trim)
            .filter(|z| !z.is_empty())
        {
            server.insert("availability_zone".into(), json!(zone));
        }
        let networks = match &self.networks {
            Networks::None => json!("none"),
            Networks::Auto => json!("auto"),
            Networks::Ids(ids) => {
                Value::Array(ids.iter().map(|id| json!({"uuid": id.trim()})).collect())
            }
        };
        server.insert("networks".into(), networks);
        if !self.security_groups.is_empty() {
            let groups: Vec<Value> = self
                .security_groups
                .iter()
                .map(|g| json!({"name": g.trim()}))
                .collect();
            server.insert("security_groups".into(), Value::Array(groups));
        }
        if !self.metadata.is_empty() {
            server.insert("metadata".into(), json!(self.metadata));
        }
        if let Some(data) = &self.user_data {
            server.insert(
                "user_data".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(data)),
            );
        }
        json!({ "server": server })
    }
}

/// One entry of a server's action log (`create`, `stop`, `start`, `reboot`, …), oldest last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceAction {
    pub action: String,
    /// As Nova writes it (UTC, without a zone).
    #[serde(default)]
    pub start_time: String,
    /// Set when the action failed.
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub request_id: String,
}

#[derive(Deserialize)]
struct ActionsBody {
    #[serde(rename = "instanceActions", default)]
    actions: Vec<InstanceAction>,
}

/// The power actions Nova takes on a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Start,
    Stop,
    /// Asks the guest to restart.
    Reboot,
    /// Resets the instance.
    HardReboot,
    Suspend,
    Resume,
}

impl PowerAction {
    pub(crate) fn body(self) -> Value {
        match self {
            PowerAction::Start => json!({"os-start": null}),
            PowerAction::Stop => json!({"os-stop": null}),
            PowerAction::Reboot => json!({"reboot": {"type": "SOFT"}}),
            PowerAction::HardReboot => json!({"reboot": {"type": "HARD"}}),
            PowerAction::Suspend => json!({"suspend": null}),
            PowerAction::Resume => json!({"resume": null}),
        }
    }
}

/// How Nova's status and the hypervisor's power state (`OS-EXT-STS:power_state`: 0 none,
/// 1 running, 3 paused, 4 shut down, 6 crashed, 7 suspended) read as a desktop's power state.
/// The status wins where it is definite; transitional ones (`REBOOT`, `MIGRATING`, `RESIZE`,
/// …) go by the power state.
pub fn power_state(status: &str, hypervisor: Option<i64>) -> PowerState {
    let by_hypervisor = |otherwise: PowerState| match hypervisor {
        Some(1) => PowerState::Running,
        Some(3) => PowerState::Paused,
        Some(4) => PowerState::Stopped,
        Some(6) => PowerState::Error,
        Some(7) => PowerState::Suspended,
        _ => otherwise,
    };
    match status.to_ascii_uppercase().as_str() {
        "BUILD" => PowerState::Building,
        "ERROR" => PowerState::Error,
        "SHUTOFF" | "SHELVED" | "SHELVED_OFFLOADED" => PowerState::Stopped,
        "SUSPENDED" => PowerState::Suspended,
        "PAUSED" => PowerState::Paused,
        "ACTIVE" => by_hypervisor(PowerState::Running),
        "DELETED" | "SOFT_DELETED" | "UNKNOWN" => PowerState::Unknown,
        _ => by_hypervisor(PowerState::Unknown),
    }
}

// ---- Nova's shapes ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct ServersPage {
    servers: Vec<RawServer>,
    #[serde(default)]
    servers_links: Vec<Link>,
}

#[derive(Deserialize)]
struct ServerBody {
    server: RawServer,
}

#[derive(Deserialize)]
pub(crate) struct Link {
    #[serde(default)]
    rel: String,
    href: String,
}

#[derive(Deserialize)]
struct RawServer {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: String,
    #[serde(rename = "OS-EXT-STS:power_state", default)]
    power_state: Option<i64>,
    #[serde(rename = "OS-EXT-STS:task_state", default)]
    task_state: Option<String>,
    #[serde(default)]
    addresses: BTreeMap<String, Vec<RawAddress>>,
    #[serde(default)]
    flavor: Value,
    #[serde(default)]
    image: Value,
    #[serde(rename = "OS-EXT-AZ:availability_zone", default)]
    availability_zone: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    created: Option<DateTime<Utc>>,
    #[serde(default)]
    fault: Option<RawFault>,
}

#[derive(Deserialize)]
struct RawAddress {
    addr: String,
    #[serde(rename = "OS-EXT-IPS:type", default)]
    kind: Option<String>,
    #[serde(rename = "OS-EXT-IPS-MAC:mac_addr", default)]
    mac: Option<String>,
}

#[derive(Deserialize)]
struct RawFault {
    #[serde(default)]
    message: String,
}

impl From<RawServer> for Server {
    fn from(raw: RawServer) -> Server {
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let addresses = raw
            .addresses
            .into_iter()
            .map(|(network, list)| {
                let list = list
                    .into_iter()
                    .filter_map(|a| {
                        Some(Address {
                            addr: a.addr.parse().ok()?,
                            kind: if a.kind.as_deref() == Some("floating") {
                                AddressKind::Floating
                            } else {
                                AddressKind::Fixed
                            },
                            mac: a.mac,
                        })
                    })
                    .collect();
                (network, list)
            })
            .collect();
        Server {
            power_state: power_state(&raw.status, raw.power_state),
            id: raw.id,
            name: raw.name,
            status: raw.status,
            task_state: raw.task_state,
            addresses,
            flavor_id: text(&raw.flavor["id"]),
            flavor_name: text(&raw.flavor["original_name"]),
            image_id: text(&raw.image["id"]),
            availability_zone: raw.availability_zone.filter(|z| !z.is_empty()),
            metadata: raw.metadata,
            created: raw.created,
            fault: raw.fault.map(|f| f.message).filter(|m| !m.is_empty()),
        }
    }
}

#[derive(Deserialize)]
struct FlavorsPage {
    flavors: Vec<RawFlavor>,
    #[serde(default)]
    flavors_links: Vec<Link>,
}

#[derive(Deserialize)]
struct RawFlavor {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    vcpus: u32,
    #[serde(default)]
    ram: u64,
    #[serde(default)]
    disk: u64,
    #[serde(rename = "OS-FLV-EXT-DATA:ephemeral", default)]
    ephemeral: u64,
    #[serde(rename = "os-flavor-access:is_public", default = "yes")]
    is_public: bool,
    #[serde(default)]
    description: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct ZonesBody {
    #[serde(rename = "availabilityZoneInfo", default)]
    zones: Vec<RawZone>,
}

#[derive(Deserialize)]
struct RawZone {
    #[serde(rename = "zoneName")]
    name: String,
    #[serde(rename = "zoneState", default)]
    state: Value,
}

#[derive(Deserialize)]
struct CreatedBody {
    server: CreatedServer,
}

#[derive(Deserialize)]
struct CreatedServer {
    id: String,
}

/// The query of a `rel="next"` link (`limit=…&marker=…`), to ask the same endpoint for the
/// next page: links carry the host the cloud thinks it has, which may not be the one the
/// catalog gives (a proxy in between).
pub(crate) fn next_query(links: &[Link]) -> Option<String> {
    let link = links.iter().find(|l| l.rel == "next")?;
    Some(
        link.href
            .split_once('?')
            .map(|(_, q)| q.to_string())
            .unwrap_or_default(),
    )
}

/// Follows pages from `path?query` until there is no next link; `page` fetches one page (a
/// path with its query) and returns its items and the next page's query.
pub(crate) async fn all_pages<T, F, Fut>(
    service: Service,
    path: &str,
    query: &str,
    mut page: F,
) -> Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>)>>,
{
    let with = |query: &str| {
        if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        }
    };
    let mut out = Vec::new();
    let mut url = with(query);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..MAX_PAGES {
        let (items, next) = page(url).await?;
        out.extend(items);
        let Some(next) = next else {
            return Ok(out);
        };
        if next.is_empty() || !seen.insert(next.clone()) {
            return Err(Error::Malformed {
                service,
                detail: format!("the next-page link of {path} repeats or names no page"),
            });
        }
        url = with(&next);
    }
    Err(Error::Malformed {
        service,
        detail: format!("{path} has more than {MAX_PAGES} pages"),
    })
}

impl Cloud {
    /// Every server of the project, all pages.
    pub async fn servers(&self) -> Result<Vec<Server>> {
        all_pages(Service::Compute, "/servers/detail", "", |path| async move {
            let page: ServersPage = self.get(Service::Compute, &path).await?;
            let next = next_query(&page.servers_links);
            Ok((page.servers.into_iter().map(Server::from).collect(), next))
        })
        .await
    }

    /// One server; `None` when Nova does not know it (deleted).
    pub async fn server(&self, id: &str) -> Result<Option<Server>> {
        let path = format!("/servers/{}", path_segment(id)?);
        match self.get::<ServerBody>(Service::Compute, &path).await {
            Ok(body) => Ok(Some(body.server.into())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every flavor the project may use, all pages.
    pub async fn flavors(&self) -> Result<Vec<Flavor>> {
        all_pages(Service::Compute, "/flavors/detail", "", |path| async move {
            let page: FlavorsPage = self.get(Service::Compute, &path).await?;
            let next = next_query(&page.flavors_links);
            let flavors = page
                .flavors
                .into_iter()
                .map(|f| Flavor {
                    id: f.id,
                    name: f.name,
                    vcpus: f.vcpus,
                    ram_mb: f.ram,
                    disk_gb: f.disk,
                    ephemeral_gb: f.ephemeral,
                    is_public: f.is_public,
                    description: f.description.filter(|d| !d.is_empty()),
                })
                .collect();
            Ok((flavors, next))
        })
        .await
    }

    /// The availability zones the project may use.
    pub async fn zones(&self) -> Result<Vec<Zone>> {
        let body: ZonesBody = self.get(Service::Compute, "/os-availability-zone").await?;
        Ok(body
            .zones
            .into_iter()
            .map(|z| Zone {
                available: z.state["available"].as_bool().unwrap_or(false),
                name: z.name,
            })
            .collect())
    }

    /// Asks Nova for a new server; returns its id at once (it is `BUILD` for a while: poll
    /// [`Cloud::server`]).
    pub async fn create_server(&self, new: &NewServer) -> Result<String> {
        let errors = new.validate();
        if !errors.is_empty() {
            return Err(Error::Invalid(errors));
        }
        let body: CreatedBody = self
            .send_json(
                Service::Compute,
                Method::POST,
                "/servers",
                Some(&new.body()),
            )
            .await?;
        Ok(body.server.id)
    }

    /// Starts, stops, reboots, suspends or resumes a server. Nova answers at once and acts
    /// in the background: poll [`Cloud::server`] for the result.
    pub async fn power(&self, id: &str, action: PowerAction) -> Result<()> {
        let path = format!("/servers/{}/action", path_segment(id)?);
        self.request(Service::Compute, Method::POST, &path, Some(&action.body()))
            .await
            .map(|_| ())
    }

    /// What has been done to a server (newest first), as Nova logs it.
    pub async fn instance_actions(&self, id: &str) -> Result<Vec<InstanceAction>> {
        let path = format!("/servers/{}/os-instance-actions", path_segment(id)?);
        let body: ActionsBody = self.get(Service::Compute, &path).await?;
        Ok(body.actions)
    }

    /// Deletes a server. Already gone counts as done.
    pub async fn delete_server(&self, id: &str) -> Result<()> {
        let path = format!("/servers/{}", path_segment(id)?);
        match self
            .request(Service::Compute, Method::DELETE, &path, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// An id as one path segment: anything but unreserved characters is percent-encoded, so an id
/// can never reach another path; an empty id or one of dots only is refused.
pub(crate) fn path_segment(id: &str) -> Result<String> {
    if id.chars().all(|c| c == '.') {
        return Err(Error::Invalid(vec![FieldError::new(
            "id",
            format!("`{id}` is not a server id"),
        )]));
    }
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_states_follow_status_then_hypervisor() {
        for (status, hyper, want) in [
            ("ACTIVE", Some(1), PowerState::Running),
            ("ACTIVE", None, PowerState::Running),
            ("ACTIVE", Some(4), PowerState::Stopped),
            ("BUILD", Some(0), PowerState::Building),
            ("ERROR", Some(1), PowerState::Error),
            ("SHUTOFF", Some(4), PowerState::Stopped),
            ("SHUTOFF", Some(1), PowerState::Stopped),
            ("SHELVED_OFFLOADED", None, PowerState::Stopped),
            ("SUSPENDED", Some(7), PowerState::Suspended),
            ("PAUSED", Some(3), PowerState::Paused),
            ("REBOOT", Some(1), PowerState::Running),
            ("HARD_REBOOT", Some(0), PowerState::Unknown),
            ("MIGRATING", Some(1), PowerState::Running),
            ("RESIZE", Some(6), PowerState::Error),
            ("UNKNOWN", Some(1), PowerState::Unknown),
            ("active", Some(1), PowerState::Running),
        ] {
            assert_eq!(power_state(status, hyper), want, "{status} {hyper:?}");
        }
    }

    #[test]
    fn a_2_79_server_view_is_read() {
        let raw: RawServer = serde_json::from_value(json!({
            "id": "9168b536-cd40-4630-b43f-b259807c6e87",
            "name": "pc-01",
            "status": "ACTIVE",
            "OS-EXT-STS:power_state": 1,
            "OS-EXT-STS:task_state": null,
            "OS-EXT-STS:vm_state": "active",
            "OS-EXT-AZ:availability_zone": "nova",
            "addresses": {"private": [
                {"addr": "192.168.1.30", "version": 4, "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": "00:0c:29:0d:11:74"},
                {"addr": "fd00::30", "version": 6, "OS-EXT-IPS:type": "fixed"},
                {"addr": "203.0.113.9", "version": 4, "OS-EXT-IPS:type": "floating"}
            ]},
            "flavor": {"vcpus": 1, "ram": 512, "disk": 1, "ephemeral": 0, "swap": 0, "original_name": "m1.tiny", "extra_specs": {}},
            "image": {"id": "70a599e0-31e7-49b7-b260-868f441e862b", "links": []},
            "metadata": {"dept": "sales"},
            "created": "2026-11-21T05:20:30Z"
        }))
        .expect("server");
        let s = Server::from(raw);
        assert_eq!(s.power_state, PowerState::Running);
        assert_eq!(s.flavor_id, None);
        assert_eq!(s.flavor_name.as_deref(), Some("m1.tiny"));
        assert_eq!(
            s.image_id.as_deref(),
            Some("70a599e0-31e7-49b7-b260-868f441e862b")
        );
        assert_eq!(s.availability_zone.as_deref(), Some("nova"));
        assert_eq!(s.metadata["dept"], "sales");
        assert_eq!(s.addresses["private"].len(), 3);
        assert_eq!(
            s.preferred_address(),
            Some("203.0.113.9".parse().expect("ip"))
        );
        assert!(s.created.is_some());

        // Booted from a volume, older flavor view, no addresses, an error.
        let raw: RawServer = serde_json::from_value(json!({
            "id": "x", "name": "y", "status": "ERROR", "image": "",
            "flavor": {"id": "1", "links": []}, "addresses": {},
            "fault": {"code": 500, "message": "No valid host was found."}
        }))
        .expect("server");
        let s = Server::from(raw);
        assert_eq!(s.image_id, None);
        assert_eq!(s.flavor_id.as_deref(), Some("1"));
        assert_eq!(s.preferred_address(), None);
        assert_eq!(s.fault.as_deref(), Some("No valid host was found."));
        assert_eq!(s.power_state, PowerState::Error);
    }

    #[test]
    fn addresses_prefer_floating_then_fixed_then_v6() {
        let raw: RawServer = serde_json::from_value(json!({
            "id": "x", "status": "ACTIVE",
            "addresses": {"a": [{"addr": "fd00::1", "OS-EXT-IPS:type": "fixed"}],
                          "b": [{"addr": "10.0.0.5", "OS-EXT-IPS:type": "fixed"}]}
        }))
        .expect("server");
        assert_eq!(
            Server::from(raw).preferred_address(),
            Some("10.0.0.5".parse().expect("ip"))
        );
    }

    #[test]
    fn create_bodies_follow_the_request() {
        let mut new = NewServer::new(" pc-01 ", "f1", "img1");
        let body = new.body();
        assert_eq!(
            body,
            json!({"server": {"name": "pc-01", "flavorRef": "f1", "imageRef": "img1", "networks": "none"}})
        );

        new.networks = Networks::Ids(vec!["n1".into(), "n2".into()]);
        new.availability_zone = Some("nova".into());
        new.security_groups = vec!["default".into()];
        new.metadata.insert("pool".into(), "sales".into());
        new.user_data = Some("#cloud-config\n".into());
        new.boot_volume = Some(BootVolume {
            size_gb: 20,
            volume_type: Some("ssd".into()),
            delete_on_termination: true,
        });
        let s = &new.body()["server"];
        assert!(
            s.get("imageRef").is_none(),
            "the image goes into the volume"
        );
        assert_eq!(s["networks"], json!([{"uuid": "n1"}, {"uuid": "n2"}]));
        assert_eq!(s["availability_zone"], "nova");
        assert_eq!(s["security_groups"], json!([{"name": "default"}]));
        assert_eq!(s["metadata"], json!({"pool": "sales"}));
        assert_eq!(s["user_data"], "I2Nsb3VkLWNvbmZpZwo=");
        assert_eq!(
            s["block_device_mapping_v2"],
            json!([{"boot_index": 0, "uuid": "img1", "source_type": "image",
                    "destination_type": "volume", "volume_size": 20, "volume_type": "ssd",
                    "delete_on_termination": true}])
        );
        assert!(new.validate().is_empty());
    }

    #[test]
    fn bad_create_requests_name_each_field() {
        let mut new = NewServer::new("", " ", "");
        new.networks = Networks::Ids(vec![]);
        new.metadata.insert(" ".into(), "x".repeat(300));
        new.boot_volume = Some(BootVolume {
            size_gb: 0,
            volume_type: Some(String::new()),
            delete_on_termination: false,
        });
        let fields: Vec<String> = new.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "name",
                "flavor",
                "image",
                "networks",
                "metadata",
                "metadata",
                "boot_volume.size_gb",
                "boot_volume.volume_type"
            ]
        );
    }

    #[test]
    fn actions_and_ids_are_encoded() {
        assert_eq!(PowerAction::Stop.body(), json!({"os-stop": null}));
        assert_eq!(
            PowerAction::HardReboot.body(),
            json!({"reboot": {"type": "HARD"}})
        );
        assert_eq!(path_segment("abc-123").expect("id"), "abc-123");
        assert_eq!(path_segment("../x?y").expect("id"), "..%2Fx%3Fy");
        assert!(path_segment("..").is_err());
        assert!(path_segment("").is_err());
    }

    #[test]
    fn next_links_give_their_query() {
        let links: Vec<Link> = serde_json::from_value(json!([
            {"rel": "next", "href": "http://other-host:8774/v2.1/servers/detail?limit=2&marker=abc"}
        ]))
        .expect("links");
        assert_eq!(next_query(&links).as_deref(), Some("limit=2&marker=abc"));
        assert_eq!(next_query(&[]), None);
    }
}
