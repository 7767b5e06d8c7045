//! Alerts: things that went wrong on their own and need an administrator (provisioning that
//! turned itself off after repeated failures), kept for the dashboard to show until someone
//! acknowledges them. Keys are the store's ordered keys (`Store::next_key`), so the newest
//! come last.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::Record;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub at: DateTime<Utc>,
    /// What raised it: `provisioning`.
    pub kind: String,
    /// What it is about: a pool's id for `provisioning`.
    pub subject: String,
    /// What happened and what to do, in a sentence.
    pub message: String,
    #[serde(default)]
    pub acknowledged: bool,
}

impl Record for Alert {
    const TREE: &'static str = "alert_by_key";
}
