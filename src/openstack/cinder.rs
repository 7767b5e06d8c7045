//! Cinder (block storage): the volume types a desktop's new boot volume can have. A cloud
//! without block storage has none: that is an empty list, not an error.

use serde::{Deserialize, Serialize};

use super::client::Cloud;
use super::error::{Result, Service};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeType {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub is_public: bool,
}

#[derive(Deserialize)]
struct TypesBody {
    volume_types: Vec<RawType>,
}

#[derive(Deserialize)]
struct RawType {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "yes")]
    is_public: bool,
}

fn yes() -> bool {
    true
}

impl Cloud {
    /// The volume types; empty when the catalog has no block storage for the center's region
    /// and interface.
    pub async fn volume_types(&self) -> Result<Vec<VolumeType>> {
        if self.token().await?.endpoints.volume.is_none() {
            return Ok(Vec::new());
        }
        let body: TypesBody = self.get(Service::Volume, "/types").await?;
        Ok(body
            .volume_types
            .into_iter()
            .map(|t| VolumeType {
                id: t.id,
                name: t.name,
                description: t.description.filter(|d| !d.is_empty()),
                is_public: t.is_public,
            })
            .collect())
    }
}
