//! Gatehouse: a VDI connection broker and gateway appliance in one binary.
//!
//! # Code map
//!
//! Data flows from the edges (HTTP console, CLI, scheduler) into the rules and down to the
//! store; nothing below reaches back up.
//!
//! | module      | owns                                                                   | never touches            |
//! |-------------|------------------------------------------------------------------------|--------------------------|
//! | `cli`       | clap commands; with `main`, the only user of `anyhow`                  | business rules           |
//! | `config`    | the typed `Config`: defaults → TOML file → `GATEHOUSE_…` env → flags   | —                        |
//! | `app`       | wiring: shared state, starts HTTP and the scheduler once, shutdown     | decisions                |
//! | `model`     | plain domain types with their validation; pure                         | I/O, sled, actix         |
//! | `store`     | the only module that names `sled`: typed collections, versioned values, migrations, transactions, snapshot swap | business rules, HTTP |
//! | `admin`     | administration rules: wizard steps, admin password, licence activation, certificate, backups, audit | HTTP types |
//! | `auth`      | admin accounts, argon2id hashes, console sessions, CSRF, sign-in throttling | HTTP types           |
//! | `licence`   | signed licence keys, installation codes, evaluation, "is this allowed" | the store                |
//! | `broker`    | the rules: sign-in → location → assignment → role and policy → offer; atomic assign, release; connection files and gateway tickets; the plans' timers and desktop events (`plans`), pool statistics (`stats`), acting on machines through `DesktopControl` (`control`) | HTTP types, sled, ldap3 |
//! | `backup`    | the snapshot file format: header, checksum, encryption, rotation       | sled                     |
//! | `tls`       | certificates: generation, PEM validation, a resolver that reloads live | the store                |
//! | `centers`   | centers at work: one cloud connection per center, inventory refresh into desktops with retry, actions on a desktop's machine | HTTP types |
//! | `openstack` | the OpenStack client: Keystone login and token renewal, the catalog, Nova/Glance/Neutron/Cinder reads, server create and power actions, typed errors | the store, HTTP routes |
//! | `scheduler` | cron expressions, the job loop, each job's status and schedule (`app` registers the jobs) | what the jobs do |
//! | `telemetry` | tracing setup and Prometheus metrics                                   | —                        |
//! | `gateway`   | the one TLS port: TLS, the PROXY protocol, WebSocket tunnels checked against broker tickets, forwarded ports, broker forwarding, flexVDI routing, the standalone gateway's link to its broker | the store, business rules |
//! | `http`      | actix routes per area, tera pages, the one error → response mapping, the role-based access gate | sled |

pub mod admin;
pub mod app;
pub mod auth;
pub mod backup;
pub mod broker;
pub mod centers;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod http;
pub mod licence;
pub mod model;
pub mod openstack;
pub mod scheduler;
pub mod store;
pub mod telemetry;
pub mod tls;
