//! Glance (image): the images the project can see (its own, public and shared ones), over
//! every page.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::client::Cloud;
use super::error::{Result, Service};
use super::nova::all_pages;

/// An image a desktop can be made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub id: String,
    /// Glance allows images without a name: then the empty text.
    pub name: String,
    /// `active` for usable images (`queued`, `saving`, `deactivated`, … otherwise).
    pub status: String,
    /// `public`, `private`, `shared` or `community`.
    pub visibility: String,
    pub size_bytes: Option<u64>,
    pub min_disk_gb: u64,
    pub min_ram_mb: u64,
    pub disk_format: Option<String>,
    /// The `os_distro` property (`ubuntu`, `windows`, …), when set.
    pub os_distro: Option<String>,
    /// The `os_type` property (`linux`, `windows`), when set.
    pub os_type: Option<String>,
    pub created: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct ImagesPage {
    images: Vec<RawImage>,
    /// The next page as a path from the service root: `/v2/images?marker=…`.
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct RawImage {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    visibility: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    min_disk: Option<u64>,
    #[serde(default)]
    min_ram: Option<u64>,
    #[serde(default)]
    disk_format: Option<String>,
    #[serde(default)]
    os_distro: Option<String>,
    #[serde(default)]
    os_type: Option<String>,
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
}

impl From<RawImage> for Image {
    fn from(raw: RawImage) -> Image {
        let some = |s: Option<String>| s.filter(|s| !s.is_empty());
        Image {
            id: raw.id,
            name: raw.name.unwrap_or_default(),
            status: raw.status,
            visibility: raw.visibility,
            size_bytes: raw.size,
            min_disk_gb: raw.min_disk.unwrap_or(0),
            min_ram_mb: raw.min_ram.unwrap_or(0),
            disk_format: some(raw.disk_format),
            os_distro: some(raw.os_distro),
            os_type: some(raw.os_type),
            created: raw.created_at,
        }
    }
}

impl Cloud {
    /// Every image the project can see, all pages.
    pub async fn images(&self) -> Result<Vec<Image>> {
        all_pages(Service::Image, "/v2/images", "", |path| async move {
            let page: ImagesPage = self.get(Service::Image, &path).await?;
            let next = page.next.map(|n| {
                n.split_once('?')
                    .map(|(_, q)| q.to_string())
                    .unwrap_or_default()
            });
            Ok((page.images.into_iter().map(Image::from).collect(), next))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glance_image_is_read_with_its_os_properties() {
        let page: ImagesPage = serde_json::from_value(serde_json::json!({
            "images": [{
                "id": "70a599e0", "name": null, "status": "active", "visibility": "public",
                "size": 1048576, "min_disk": 0, "min_ram": 0, "disk_format": "raw",
                "os_distro": "ubuntu", "created_at": "2026-11-21T05:00:00Z",
                "checksum": "abc", "tags": []
            }],
            "next": "/v2/images?marker=70a599e0",
            "first": "/v2/images"
        }))
        .expect("page");
        let image = Image::from(page.images.into_iter().next().expect("one"));
        assert_eq!(image.name, "");
        assert_eq!(image.os_distro.as_deref(), Some("ubuntu"));
        assert_eq!(image.os_type, None);
        assert_eq!(image.size_bytes, Some(1_048_576));
        assert_eq!(page.next.as_deref(), Some("/v2/images?marker=70a599e0"));
    }
}
