//! Gatehouse integration tests: one test binary, one module per area. Each test starts the
//! real `gatehouse` binary on 127.0.0.1:0 with a fresh data folder and talks HTTPS to it.

mod common;
#[path = "../fixtures/broker.rs"]
mod fixture;

mod api;
mod backup;
mod balancer;
mod broker;
mod browser;
mod centers;
mod chrome;
mod cloud_failures;
mod console;
mod display;
mod flexvdi;
mod gateway;
mod install;
mod jobs;
mod lab;
mod ldap;
mod machine;
mod openstack;
mod openstack_fake;
mod plans;
mod portal;
mod portal_browser;
mod provisioning;
mod proxies;
mod registry;
mod roles;
mod slapd;
mod standalone;
