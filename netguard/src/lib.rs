//! netguard: keeps container network interfaces from silently vanishing or losing their names.
//!
//! Data flows one way: kernel events ([`trace`]) -> what we remember ([`ledger`]) -> a plan
//! against what the kernel says now ([`inventory`], [`restore`]) -> netlink actions.
//! Modules import only from lower layers (docs/architecture.md; checked by `cargo xtask test`).

pub mod agent;
pub mod api;
mod blocking;
pub mod capture;
pub mod client;
pub mod config;
pub mod control;
pub mod event;
pub mod fault;
pub mod inotify;
pub mod install;
pub mod inventory;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod notify;
pub mod outcomes;
pub mod recording;
pub mod report;
pub mod restore;
pub mod rtnl;
pub mod runtime;
pub mod runtime_failures;
pub mod status;
pub mod trace;
