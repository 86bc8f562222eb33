//! The netlink plumbing every part that talks to the kernel shares: sockets that listen to
//! every netns, request messages, and names for devices in flight.

pub mod dump;
pub mod listen;
pub mod message;

/// A link name no container or host uses, unique within this process, for a device in flight
/// between namespaces (its real name may be taken where it is created or moved from).
pub fn temporary_link_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000;
    format!("ngtmp{}.{n}", std::process::id() % 10_000)
}

/// Whether `name` is one [`temporary_link_name`] gives.
pub fn is_temporary_link_name(name: &str) -> bool {
    name.starts_with("ngtmp")
}
