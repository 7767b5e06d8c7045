//! A seeded "Lab", what the broker, portal and role tests start from: RDP desktops `lab-000`,
//! `lab-001`, … (at 10.0.0.10, 10.0.0.11, …) in the pool "Lab", the policy `lab` offering one of
//! them by name, and assignment rows giving directory groups a role with that policy.

use gatehouse::model::Protocol;
use gatehouse::model::desktop::{Desktop, DesktopInput};
use gatehouse::model::policy::{AssignmentRow, AssignmentTable, PickOrder, Policy, PolicyEntry};
use gatehouse::model::pool::Pool;
use gatehouse::store::Store;

/// Seeds the Lab into `store` for the authentication server `server_id`; `rows` are
/// (group, role id) pairs, tried in order. Returns the pool.
pub fn seed(store: &Store, server_id: &str, desktops: usize, rows: &[(&str, &str)]) -> Pool {
    let pool = Pool::new("Lab");
    store.put(&pool.id, &pool).expect("pool");
    for i in 0..desktops {
        let d = Desktop::from_input(
            DesktopInput {
                name: format!("lab-{i:03}"),
                display_name: String::new(),
                address: format!("10.0.{}.{}", i / 200, i % 200 + 10),
                port: None,
                protocol: Protocol::Rdp,
                os: "Windows 11".into(),
            },
            chrono::Utc::now(),
        );
        store.put(&d.id, &d).expect("desktop");
    }
    let policy = Policy {
        id: "lab".into(),
        name: "Lab".into(),
        entries: vec![PolicyEntry {
            pool_id: pool.id.clone(),
            offer: 1,
            running_only: false,
            order: PickOrder::ByName,
            protocol_plan: "default".into(),
            power_plan: "default".into(),
            release_plan: "default".into(),
        }],
    };
    store.put(&policy.id, &policy).expect("policy");
    let table = AssignmentTable {
        rows: rows
            .iter()
            .map(|(group, role)| AssignmentRow {
                group: Some(group.to_string()),
                location_id: None,
                role_id: role.to_string(),
                policy_id: "lab".into(),
            })
            .collect(),
        otherwise: None,
    };
    store.put(server_id, &table).expect("assignments");
    pool
}
