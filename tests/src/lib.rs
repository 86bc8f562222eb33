//! Helpers for tests that need root: a [`World`] of network namespaces the test creates and
//! always removes, the tracer's events about it, and the `netguard` binary run against it.

mod bystander;
pub mod cni;
mod command;
mod netns;
pub mod ops;
pub mod podman;
mod watch;
mod world;

pub use bystander::Bystanders;
pub use command::{
    netguard_bin, shim_bin, wait_until, wait_until_every, AgentProcess, Netguard, Ran,
    AGENT_TIMEOUT,
};
pub use netns::{dumps, has_addr, ip_in, is_up, link, pings, TestDir, TestNetns, IP};
pub use watch::{is_at, EventWatch, EVENT_TIMEOUT};
pub use world::World;
