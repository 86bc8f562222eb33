//! Link dumps read and boiled down one datagram at a time, on a blocking socket of the
//! caller's.
//!
//! Through an rtnetlink connection the whole answer is decoded before the first message is
//! looked at: the connection task reads and decodes until the socket is empty, and a link
//! dump goes on as fast as it is read. A decoded link message takes ~19 KB (its attributes:
//! IPv6 settings, bridge port data...): at 2,000 host links the agent's heap peaked at 50 MB,
//! 38 MB of it one host dump queued decoded (heaptrack); at 10,000 links ~190 MB, which the
//! allocator then kept. Here one datagram (32 KB) at a time is decoded.

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::Socket;

/// Sends an RTM_GETLINK dump of the socket's netns (without statistics) or (`nsid`) of the
/// netns with that nsid there, then reads the answer, keeping what `boil` makes of each link.
/// Blocks until the answer is read (the kernel gives it at once).
pub fn links<T>(
    socket: &Socket,
    nsid: Option<i32>,
    mut boil: impl FnMut(&LinkMessage) -> Option<T>,
) -> io::Result<Vec<T>> {
    let mut query = LinkMessage::default();
    match nsid {
        Some(id) => query.attributes.push(LinkAttribute::IfNetnsId(id)),
        // Only here: with a filter mask the kernel first sizes every device of the socket's
        // netns (rtnl_calcit), for a dump of another netns too: every host device per
        // container netns, which made the tracer's start at 10,000 netns take minutes.
        None => query
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])),
    }
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(query));
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;

    let mut buf = vec![0u8; 64 << 10];
    let mut kept = Vec::new();
    loop {
        // SAFETY: recv into `buf`, alive and of the length given.
        let len = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if len < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut rest = &buf[..len as usize];
        while !rest.is_empty() {
            let Ok(frame) = NetlinkBuffer::new_checked(rest) else {
                tracing::warn!("malformed link dump datagram, rest skipped");
                break;
            };
            let size = frame.length() as usize;
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..size]) {
                Ok(message) => match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        kept.extend(boil(&link));
                    }
                    NetlinkPayload::Done(_) => return Ok(kept),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    _ => {}
                },
                Err(e) => tracing::warn!("undecodable link message in a dump skipped: {e}"),
            }
            // Messages are 4-byte aligned within a datagram.
            rest = rest.get(size.next_multiple_of(4)..).unwrap_or_default();
        }
    }
}
