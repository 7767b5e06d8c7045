//! Pool statistics: the `pool_stats` job counts every pool's desktops by state and keeps the
//! counts as each pool's "current" (then hands them to the provisioning check), and the
//! `pool_history_stats` job adds a sample per pool to the history, dropping samples older than
//! the configured number of days.
//!
//! The provisioning check is a [`Provisioner`]: what to do when a pool runs low is decided
//! by whoever implements it (the OpenStack provisioning); [`NoProvisioning`] does nothing.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Duration, Utc};

use super::{Broker, BrokerError, OpenSessions, Result};
use crate::model::history::HistoryEntry;
use crate::model::pool::Pool;
use crate::model::stats::{CountedDesktop, PoolSample, PoolStats, count_pools};
use crate::store::{Record, Store};

/// What a provisioning check answers: a line for the job's result, or why it failed.
pub type ProvisionFuture<'a> =
    Pin<Box<dyn Future<Output = std::result::Result<String, String>> + Send + 'a>>;

/// The provisioning check `pool_stats` runs after every count: given each pool's counts, it
/// starts provisioning where a pool is below its threshold.
pub trait Provisioner: Send + Sync {
    fn check<'a>(&'a self, stats: &'a [PoolStats]) -> ProvisionFuture<'a>;
}

/// No provisioning: the check does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProvisioning;

impl Provisioner for NoProvisioning {
    fn check<'a>(&'a self, _stats: &'a [PoolStats]) -> ProvisionFuture<'a> {
        Box::pin(async { Ok(String::new()) })
    }
}

impl Broker {
    /// Counts every pool's desktops now and keeps the counts as the pools' current ones (the
    /// counts of pools that no longer exist are dropped).
    pub async fn count_pools(&self) -> Result<Vec<PoolStats>> {
        let membership = self.membership().await?;
        self.store
            .call(move |s| {
                let pools: Vec<Pool> = s.values::<Pool>()?;
                let desktops: Vec<CountedDesktop> = s.values::<CountedDesktop>()?;
                let connected: HashSet<String> = s
                    .list::<OpenSessions>()?
                    .into_iter()
                    .filter(|(_, o)| !o.ids.is_empty())
                    .map(|(id, _)| id)
                    .collect();
                let stats = count_pools(&pools, &membership, &desktops, &connected, Utc::now());
                // Counted again every run: kept without waiting for the disk (a crash loses
                // at most the last count), so counting stays cheap.
                for p in &stats {
                    s.put_lazy(&p.pool_id, p)?;
                }
                for (id, _) in s.list::<PoolStats>()? {
                    if !stats.iter().any(|p| p.pool_id == id) {
                        s.delete::<PoolStats>(&id)?;
                    }
                }
                Ok::<_, BrokerError>(stats)
            })
            .await
    }

    /// Adds a sample of every pool's counts (counted now) to the history, and drops pool
    /// samples and desktop history lines older than `keep_days` (of pools and desktops
    /// deleted since, too). Returns (samples added, samples and lines dropped).
    pub async fn sample_pool_history(&self, keep_days: u32) -> Result<(usize, usize)> {
        let stats = self.count_pools().await?;
        self.store
            .call(move |s| {
                s.transact(&[PoolSample::TREE], |tx| {
                    for p in &stats {
                        let sample = PoolSample {
                            at: p.at,
                            counts: p.counts,
                        };
                        tx.put::<_, BrokerError>(&PoolSample::key(&p.pool_id, p.at), &sample)?;
                    }
                    Ok(())
                })?;
                let cutoff = Utc::now() - Duration::days(i64::from(keep_days));
                let dropped = s.prune_before::<PoolSample>(cutoff)?
                    + s.prune_before::<HistoryEntry>(cutoff)?;
                Ok::<_, BrokerError>((stats.len(), dropped))
            })
            .await
    }
}

/// A pool's counts as last counted (`None` before the first count).
pub fn current(s: &Store, pool_id: &str) -> Result<Option<PoolStats>> {
    Ok(s.get::<PoolStats>(pool_id)?)
}

/// A pool's history from `since` on (all kept when `None`), oldest first.
pub fn history(s: &Store, pool_id: &str, since: Option<DateTime<Utc>>) -> Result<Vec<PoolSample>> {
    let (from, to) = PoolSample::range(pool_id, since);
    Ok(s.range::<PoolSample>(&from, &to, false, usize::MAX)?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stats::PoolStatCounts;

    #[test]
    fn old_samples_and_history_lines_are_pruned_and_recent_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("store");
        let now = Utc::now();
        for pool in ["a", "a.b", "b", "gone"] {
            for days in [100, 91, 89, 1] {
                let at = now - Duration::days(days);
                let sample = PoolSample {
                    at,
                    counts: PoolStatCounts::default(),
                };
                s.put(&PoolSample::key(pool, at), &sample).expect("put");
            }
        }
        for desktop in ["d1", "d1-2"] {
            for days in [100, 1] {
                let at = now - Duration::days(days);
                let line = HistoryEntry {
                    at,
                    desktop: desktop.into(),
                    action: "event.logout".into(),
                    detail: String::new(),
                    ok: true,
                    actor: "agent".into(),
                };
                let key = HistoryEntry::key(desktop, &format!("{}-0", crate::store::time_key(at)));
                s.put(&key, &line).expect("put");
            }
        }
        let cutoff = now - Duration::days(90);
        assert_eq!(s.prune_before::<PoolSample>(cutoff).expect("pruned"), 8);
        assert_eq!(s.prune_before::<HistoryEntry>(cutoff).expect("pruned"), 2);
        for desktop in ["d1", "d1-2"] {
            let (from, to) = HistoryEntry::range(desktop);
            let kept = s
                .range::<HistoryEntry>(&from, &to, false, 10)
                .expect("history");
            assert_eq!(kept.len(), 1, "{desktop}");
            assert!(kept[0].1.at > cutoff);
        }
        for pool in ["a", "a.b", "b", "gone"] {
            let kept = history(&s, pool, None).expect("history");
            assert_eq!(kept.len(), 2, "{pool}");
            assert!(kept[0].at < kept[1].at, "oldest first");
        }
        let recent = history(&s, "a", Some(now - Duration::days(2))).expect("since");
        assert_eq!(recent.len(), 1);
    }
}
