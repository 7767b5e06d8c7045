//! Pool statistics: each pool's desktops counted by state ([`PoolStatCounts`]), the current
//! counts as the last `pool_stats` run found them ([`PoolStats`]), and the history samples
//! `pool_history_stats` keeps ([`PoolSample`], keyed by pool and time so one pool's history
//! is one range of keys).
//!
//! Pure: counting takes the desktops, the pool membership and the set of desktops with a
//! connected user; the broker reads them from the store.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::desktop::{Desktop, PowerState};
use super::pool::{Membership, Pool};
use crate::store::Record;

/// What counting needs of a desktop, read from the desktops' own tree without the rest of
/// the record (the other fields are skipped while decoding, which keeps `pool_stats` cheap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountedDesktop {
    pub id: String,
    #[serde(default)]
    pub power_state: PowerState,
    #[serde(default)]
    pub assigned_user: Option<String>,
}

impl Record for CountedDesktop {
    const TREE: &'static str = Desktop::TREE;
    const VERSION: u16 = Desktop::VERSION;
    /// Older desktops are read the way `Desktop` reads them.
    fn upgrade(version: u16, json: &[u8]) -> Result<Self, String> {
        Desktop::upgrade(version, json).map(|d| CountedDesktop::from(&d))
    }
}

impl From<&Desktop> for CountedDesktop {
    fn from(d: &Desktop) -> Self {
        CountedDesktop {
            id: d.id.clone(),
            power_state: d.power_state,
            assigned_user: d.assigned_user.clone(),
        }
    }
}

impl CountedDesktop {
    /// As [`Desktop::is_available`].
    fn is_available(&self) -> bool {
        self.assigned_user.is_none()
            && matches!(self.power_state, PowerState::Running | PowerState::Unknown)
    }
}

/// One pool's desktops by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatCounts {
    /// Desktops in the pool.
    pub total: u32,
    /// Held by a user.
    pub assigned: u32,
    /// Held by nobody.
    pub unassigned: u32,
    /// Could be offered now: unassigned, and running or of unknown power state.
    pub available: u32,
    pub running: u32,
    /// Stopped, suspended or paused.
    pub stopped: u32,
    /// Being created by their center.
    pub provisioning: u32,
    /// Desktops with a user connected (an open session).
    pub connected: u32,
}

impl PoolStatCounts {
    /// The counts in the order the console and the metrics list them, with their names.
    pub fn named(&self) -> [(&'static str, u32); 8] {
        [
            ("total", self.total),
            ("assigned", self.assigned),
            ("unassigned", self.unassigned),
            ("available", self.available),
            ("running", self.running),
            ("stopped", self.stopped),
            ("provisioning", self.provisioning),
            ("connected", self.connected),
        ]
    }

    fn add(&mut self, d: &CountedDesktop, connected: bool) {
        self.total += 1;
        if d.assigned_user.is_some() {
            self.assigned += 1;
        } else {
            self.unassigned += 1;
        }
        if d.is_available() {
            self.available += 1;
        }
        match d.power_state {
            PowerState::Running => self.running += 1,
            PowerState::Stopped | PowerState::Suspended | PowerState::Paused => self.stopped += 1,
            PowerState::Building => self.provisioning += 1,
            PowerState::Unknown | PowerState::Error | PowerState::Deleting => {}
        }
        if connected {
            self.connected += 1;
        }
    }
}

/// A pool's counts as the last `pool_stats` run found them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    pub pool_id: String,
    pub pool_name: String,
    pub at: DateTime<Utc>,
    pub counts: PoolStatCounts,
}

impl Record for PoolStats {
    const TREE: &'static str = "pool_stats_by_pool";
}

/// One point of a pool's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSample {
    pub at: DateTime<Utc>,
    pub counts: PoolStatCounts,
}

impl Record for PoolSample {
    const TREE: &'static str = "pool_history_by_pool_time";
}

impl PoolSample {
    /// The store key: the pool id, then the time (milliseconds, hex, fixed width).
    pub fn key(pool_id: &str, at: DateTime<Utc>) -> String {
        format!("{pool_id}/{}", crate::store::time_key(at))
    }

    /// The key range of one pool's samples from `since` on: (from, to).
    pub fn range(pool_id: &str, since: Option<DateTime<Utc>>) -> (String, String) {
        let from = match since {
            Some(t) => Self::key(pool_id, t),
            None => format!("{pool_id}/"),
        };
        (from, format!("{pool_id}/~"))
    }
}

/// Every pool's counts: `connected` holds the ids of the desktops with a user connected.
pub fn count_pools(
    pools: &[Pool],
    membership: &Membership,
    desktops: &[CountedDesktop],
    connected: &HashSet<String>,
    at: DateTime<Utc>,
) -> Vec<PoolStats> {
    let by_id: HashMap<&str, &CountedDesktop> =
        desktops.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut out: Vec<PoolStats> = pools
        .iter()
        .map(|pool| {
            let mut counts = PoolStatCounts::default();
            for id in membership.members(&pool.id) {
                if let Some(d) = by_id.get(&**id) {
                    counts.add(d, connected.contains(&**id));
                }
            }
            PoolStats {
                pool_id: pool.id.clone(),
                pool_name: pool.name.clone(),
                at,
                counts,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.pool_name
            .to_lowercase()
            .cmp(&b.pool_name.to_lowercase())
            .then_with(|| a.pool_id.cmp(&b.pool_id))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::model::desktop::DesktopInput;

    fn desktop(name: &str, power: PowerState, user: Option<&str>) -> Desktop {
        let mut d = Desktop::from_input(
            DesktopInput {
                name: name.into(),
                display_name: String::new(),
                address: "10.0.0.1".into(),
                port: None,
                protocol: Protocol::Rdp,
                os: String::new(),
            },
            Utc::now(),
        );
        d.power_state = power;
        d.assigned_user = user.map(str::to_string);
        d
    }

    #[test]
    fn desktops_are_counted_by_state_per_pool() {
        let pools = vec![Pool::new("All")];
        let desktops = vec![
            desktop("a", PowerState::Running, Some("ldap/alice")),
            desktop("b", PowerState::Running, None),
            desktop("c", PowerState::Stopped, None),
            desktop("d", PowerState::Building, None),
            desktop("e", PowerState::Unknown, None),
        ];
        let membership = Membership::evaluate(&pools, &desktops);
        let connected = HashSet::from([desktops[0].id.clone()]);
        let counted: Vec<CountedDesktop> = desktops.iter().map(CountedDesktop::from).collect();
        let stats = count_pools(&pools, &membership, &counted, &connected, Utc::now());
        for d in &desktops {
            assert_eq!(
                CountedDesktop::from(d).is_available(),
                d.is_available(),
                "counted as the broker offers"
            );
        }
        assert_eq!(stats.len(), 1);
        assert_eq!(
            stats[0].counts,
            PoolStatCounts {
                total: 5,
                assigned: 1,
                unassigned: 4,
                available: 2,
                running: 2,
                stopped: 1,
                provisioning: 1,
                connected: 1,
            }
        );
    }

    #[test]
    fn a_counted_desktop_reads_a_stored_desktop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("store");
        let d = desktop("a", PowerState::Stopped, Some("ldap/bob"));
        store.put(&d.id, &d).expect("put");
        let read: CountedDesktop = store.get(&d.id).expect("get").expect("there");
        assert_eq!(read, CountedDesktop::from(&d));
    }

    #[test]
    fn sample_keys_sort_by_time_within_their_pool() {
        let t = Utc::now();
        let early = PoolSample::key("p1", t - chrono::Duration::days(2));
        let late = PoolSample::key("p1", t);
        assert!(early < late);
        let (from, to) = PoolSample::range("p1", Some(t - chrono::Duration::days(1)));
        assert!(!(from <= early && early < to));
        assert!(from <= late && late < to);
        let other = PoolSample::key("p10", t);
        let (from, to) = PoolSample::range("p1", None);
        assert!(!(from <= other && other < to));
    }
}
