//! Neutron (network): the networks a new desktop can be attached to and the project's
//! security groups.

use serde::{Deserialize, Serialize};

use super::client::Cloud;
use super::error::{Result, Service};
use super::nova::{Link, all_pages, next_query};

/// A network the project can attach servers to: its own, a shared one, or an external one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub status: String,
    pub shared: bool,
    /// `router:external`: the provider network floating addresses come from.
    pub external: bool,
    pub project_id: String,
    pub subnets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
}

#[derive(Deserialize)]
struct NetworksPage {
    networks: Vec<RawNetwork>,
    #[serde(default)]
    networks_links: Vec<Link>,
}

#[derive(Deserialize)]
struct RawNetwork {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    shared: bool,
    #[serde(rename = "router:external", default)]
    external: bool,
    // Neutron sends both; older ones only `tenant_id`.
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    subnets: Vec<String>,
}

#[derive(Deserialize)]
struct GroupsPage {
    security_groups: Vec<RawGroup>,
    #[serde(default)]
    security_groups_links: Vec<Link>,
}

#[derive(Deserialize)]
struct RawGroup {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

impl Cloud {
    /// The networks of the project, and the shared and external ones (an administrator's
    /// token sees every project's: those are left out).
    pub async fn networks(&self) -> Result<Vec<Network>> {
        let project = self.token().await?.project_id.clone();
        let all = all_pages(Service::Network, "/v2.0/networks", "", |path| async move {
            let page: NetworksPage = self.get(Service::Network, &path).await?;
            let next = next_query(&page.networks_links);
            Ok((page.networks, next))
        })
        .await?;
        Ok(all
            .into_iter()
            .map(|n| Network {
                id: n.id,
                name: n.name,
                status: n.status,
                shared: n.shared,
                external: n.external,
                project_id: n.project_id.or(n.tenant_id).unwrap_or_default(),
                subnets: n.subnets,
            })
            .filter(|n| n.project_id == project || n.shared || n.external)
            .collect())
    }

    /// The project's security groups (without their rules).
    pub async fn security_groups(&self) -> Result<Vec<SecurityGroup>> {
        let project = self.token().await?.project_id.clone();
        let query = format!(
            "project_id={}&fields=id&fields=name&fields=description",
            super::nova::path_segment(&project)?
        );
        all_pages(
            Service::Network,
            "/v2.0/security-groups",
            &query,
            |path| async move {
                let page: GroupsPage = self.get(Service::Network, &path).await?;
                let next = next_query(&page.security_groups_links);
                let groups = page
                    .security_groups
                    .into_iter()
                    .map(|g| SecurityGroup {
                        id: g.id,
                        name: g.name,
                        description: g.description,
                    })
                    .collect();
                Ok((groups, next))
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_read_with_project_or_tenant_id() {
        let page: NetworksPage = serde_json::from_value(serde_json::json!({"networks": [
            {"id": "n1", "name": "a", "tenant_id": "p1", "project_id": "p1", "shared": false,
             "router:external": false, "status": "ACTIVE", "subnets": ["s1"]},
            {"id": "n2", "name": "b", "tenant_id": "p2"}
        ]}))
        .expect("page");
        assert_eq!(page.networks[0].project_id.as_deref(), Some("p1"));
        assert_eq!(page.networks[1].tenant_id.as_deref(), Some("p2"));
        assert!(page.networks_links.is_empty());
    }
}
