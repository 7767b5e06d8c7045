//! The OpenStack client: logging in to a center's cloud (Keystone v3, project scoped),
//! reading its inventory (Nova servers, flavors and zones, Glance images, Neutron networks and
//! security groups, Cinder volume types) and acting on servers (create, power actions,
//! delete), with typed errors that say what failed and carry the cloud's own message.
//!
//! Owns HTTP to OpenStack (`reqwest` with rustls, a timeout on every request, token renewal,
//! the retry after a 401). Never touches the store or the console: the caller merges an
//! [`Inventory`] into the stored desktops and records a center's status.
//!
//! | file           | what                                                                 |
//! |----------------|----------------------------------------------------------------------|
//! | `client`       | [`Cloud`]: one center's connection, token cache and renewal          |
//! | `keystone`     | login, scope errors, the catalog → [`Endpoints`]                     |
//! | `nova`         | servers (paged), flavors, zones, create, power actions, power states |
//! | `glance`       | images (paged)                                                       |
//! | `neutron`      | networks, security groups                                            |
//! | `cinder`       | volume types (none without block storage)                            |
//! | `inventory`    | [`Inventory`] and a server as a desktop's fields                     |
//! | `transport`    | the HTTP client, TLS trust, timeouts, error classification           |
//! | `error`        | [`Error`], [`Service`], reading the clouds' error bodies             |

mod cinder;
mod client;
mod error;
mod glance;
mod inventory;
mod keystone;
mod neutron;
mod nova;
mod transport;

pub use cinder::VolumeType;
pub use client::{Cloud, RENEW_BEFORE};
pub use error::{Error, Result, Service, cloud_message};
pub use glance::Image;
pub use inventory::{DesktopFields, Inventory, inventory};
pub use keystone::{Endpoints, Token};
pub use neutron::{Network, SecurityGroup};
pub use nova::{
    Address, AddressKind, BootVolume, COMPUTE_API_VERSION, Flavor, InstanceAction,
    MAX_METADATA_ITEMS, MAX_METADATA_LEN, Networks, NewServer, PowerAction, Server, Zone,
    power_state,
};
pub use transport::Timeouts;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::center::Center;

/// What a successful connection test found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub keystone_url: String,
    pub user_id: String,
    pub project_id: String,
    pub token_expires_at: DateTime<Utc>,
    pub compute_url: String,
    pub image_url: String,
    pub network_url: String,
    /// `None`: the cloud has no block storage (no new volumes for desktops).
    pub volume_url: Option<String>,
    pub servers: usize,
    pub flavors: usize,
    pub images: usize,
    pub zones: usize,
    pub networks: usize,
    pub security_groups: usize,
    pub volume_types: usize,
    /// Things that work but deserve attention (no certificate check, no block storage, …).
    pub warnings: Vec<String>,
}

/// Tries a center's settings end to end: the Keystone address, the TLS trust, the login, the
/// project, the catalog for the region and interface, and one read of each service. The error
/// says which of those failed (see [`Error::code`]).
pub async fn test_connection(center: &Center) -> Result<Summary> {
    test_connection_with(center, Timeouts::default()).await
}

/// [`test_connection`] with other timeouts.
pub async fn test_connection_with(center: &Center, timeouts: Timeouts) -> Result<Summary> {
    let cloud = Cloud::with_timeouts(center, timeouts)?;
    let token = cloud.login().await?;
    let inventory = cloud.inventory().await?;
    let mut warnings = center.warnings();
    if token.endpoints.volume.is_none() {
        warnings.push(format!(
            "the catalog has no block storage (volumev3) for region `{}` and interface `{}`: \
             desktops cannot be created on new volumes",
            center.region.trim(),
            center.interface.as_str()
        ));
    }
    warnings.extend(inventory.warnings.iter().cloned());
    Ok(Summary {
        keystone_url: cloud.keystone_url().to_string(),
        user_id: token.user_id.clone(),
        project_id: token.project_id.clone(),
        token_expires_at: token.expires_at,
        compute_url: token.endpoints.compute.clone(),
        image_url: token.endpoints.image.clone(),
        network_url: token.endpoints.network.clone(),
        volume_url: token.endpoints.volume.clone(),
        servers: inventory.servers.len(),
        flavors: inventory.flavors.len(),
        images: inventory.images.len(),
        zones: inventory.zones.len(),
        networks: inventory.networks.len(),
        security_groups: inventory.security_groups.len(),
        volume_types: inventory.volume_types.len(),
        warnings,
    })
}
