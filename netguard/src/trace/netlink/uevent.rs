//! The kernel's uevents (NETLINK_KOBJECT_UEVENT, the group udev reads): a driver binding or
//! unbinding a bus device says `bind`/`unbind` with DRIVER= and the device's path, whose last
//! part is the bus address rtnetlink gives as a NIC's IFLA_PARENT_DEV_NAME. No udev needed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The multicast group the kernel sends its uevents to (udev re-broadcasts on group 2).
const KERNEL_GROUP: u32 = 1;

/// A driver bound or let go of a bus device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverChange {
    pub bound: bool,
    /// `0000:00:04.0`: the last part of DEVPATH.
    pub bus_addr: String,
    pub driver: Option<String>,
}

impl DriverChange {
    /// Reads one uevent datagram (`ACTION@DEVPATH\0KEY=VALUE\0...`); `None` for every other
    /// action and for anything malformed.
    pub fn parse(datagram: &[u8]) -> Option<DriverChange> {
        let mut parts = datagram.split(|b| *b == 0);
        // The header is "ACTION@DEVPATH"; a message without one is not from the kernel.
        if !parts.next()?.contains(&b'@') {
            return None;
        }
        let (mut action, mut devpath, mut driver) = (None, None, None);
        for part in parts {
            let text = std::str::from_utf8(part).ok()?;
            match text.split_once('=') {
                Some(("ACTION", v)) => action = Some(v),
                Some(("DEVPATH", v)) => devpath = Some(v),
                Some(("DRIVER", v)) if !v.is_empty() => driver = Some(v.to_string()),
                _ => {}
            }
        }
        let bound = match action? {
            "bind" => true,
            "unbind" => false,
            _ => return None,
        };
        let bus_addr = devpath?.rsplit('/').next().filter(|a| !a.is_empty())?;
        Some(DriverChange {
            bound,
            bus_addr: bus_addr.to_string(),
            driver,
        })
    }
}

/// The driver bound to bus device `bus_addr` now, from sysfs (`/sys/bus/*/devices/ADDR/driver`
/// links to it). Needed because an unbind uevent has no DRIVER=: the kernel clears the
/// device's driver before it sends it.
pub fn bound_driver(bus_addr: &str) -> Option<String> {
    if bus_addr.contains('/') || bus_addr.starts_with('.') {
        return None;
    }
    let buses = std::fs::read_dir("/sys/bus").ok()?;
    buses.flatten().find_map(|bus| {
        let link = std::fs::read_link(bus.path().join("devices").join(bus_addr).join("driver"));
        let target = link.ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    })
}

/// A non-blocking uevent socket, subscribed to the kernel's group.
pub struct Uevents {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl Uevents {
    /// Opens and subscribes; call inside the tokio runtime.
    pub fn open() -> io::Result<Uevents> {
        // SAFETY: plain socket(2); the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket(2) just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid; we set the family and groups.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = KERNEL_GROUP;
        // SAFETY: addr is a sockaddr_nl of the size we pass.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns the fd and keeps it open until it deregisters it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Uevents {
            fd,
            buf: vec![0; 16 * 1024],
        })
    }

    /// The next driver bind/unbind; other uevents are skipped. An overrun (ENOBUFS) loses
    /// uevents, which only makes causes coarser: it is logged and reading goes on.
    pub async fn next(&mut self) -> io::Result<DriverChange> {
        loop {
            let mut guard = self.fd.readable().await?;
            let fd = guard.get_inner().as_raw_fd();
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => guard.clear_ready(),
                    Some(libc::ENOBUFS) => {
                        tracing::warn!("uevent overrun: driver bind/unbind causes may be missed")
                    }
                    Some(libc::EINTR) => {}
                    _ => return Err(err),
                }
                continue;
            }
            if let Some(change) = DriverChange::parse(&self.buf[..n as usize]) {
                return Ok(change);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_and_unbind_name_the_bus_address_and_driver() {
        let unbind = b"unbind@/devices/pci0000:00/0000:00:04.0\0ACTION=unbind\0\
            DEVPATH=/devices/pci0000:00/0000:00:04.0\0SUBSYSTEM=pci\0DRIVER=e1000\0SEQNUM=1900\0";
        assert_eq!(
            DriverChange::parse(unbind),
            Some(DriverChange {
                bound: false,
                bus_addr: "0000:00:04.0".into(),
                driver: Some("e1000".into()),
            })
        );
        let bind = b"bind@/devices/pci0000:00/0000:00:04.0\0ACTION=bind\0\
            DEVPATH=/devices/pci0000:00/0000:00:04.0\0DRIVER=e1000\0";
        assert!(DriverChange::parse(bind).unwrap().bound);
    }

    #[test]
    fn other_actions_udev_messages_and_garbage_are_skipped() {
        let add = b"add@/devices/virtual/net/mv0\0ACTION=add\0DEVPATH=/devices/virtual/net/mv0\0";
        assert_eq!(DriverChange::parse(add), None);
        assert_eq!(DriverChange::parse(b"libudev\0\xfe\xed"), None);
        assert_eq!(DriverChange::parse(b""), None);
        assert_eq!(
            DriverChange::parse(b"unbind@/x\0ACTION=unbind\0DEVPATH=/\0"),
            None
        );
        assert_eq!(
            DriverChange::parse(b"unbind@/x\0ACTION=unbind\0\xff\0"),
            None
        );
    }
}
