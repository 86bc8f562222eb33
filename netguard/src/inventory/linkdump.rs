//! A link dump read and boiled down one datagram at a time, on a socket of its own.
//!
//! Through a shared rtnetlink connection the whole answer is decoded before the first message
//! is looked at: the connection task reads and decodes until the socket is empty, and a link
//! dump goes on as fast as it is read. A decoded link message takes ~19 KB (its attributes:
//! IPv6 settings, bridge port data...): at 2,000 host links the agent's heap peaked at 50 MB,
//! 38 MB of it the host's links queued decoded (heaptrack), and at 10,000 a pass held ~190 MB
//! that the allocator then kept. Here at most one datagram (32 KB) is decoded at a time.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::conn::socket_in;
use super::snapshot::{parse_link, LiveLink};
use super::InventoryError;

/// Every link of the netns `netns` (opened from `path`), without statistics.
pub(super) async fn links(netns: &File, path: &Path) -> Result<Vec<LiveLink>, InventoryError> {
    let name = path.display().to_string();
    let socket = socket_in(netns, path).await?;
    let io_error = {
        let name = name.clone();
        move |source| InventoryError::Socket {
            netns: name.clone(),
            source,
        }
    };
    let mut query = LinkMessage::default();
    query
        .attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(query));
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.header.sequence_number = 1;
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0).map_err(&io_error)?;
    // The reads block (the kernel answers at once); they run off the async workers.
    let read = tokio::task::spawn_blocking(move || read_dump(&socket, &name))
        .await
        .map_err(|e| io_error(io::Error::other(e)))?;
    read
}

/// Reads the answer to the dump sent on `socket` until its end.
fn read_dump(socket: &netlink_sys::Socket, name: &str) -> Result<Vec<LiveLink>, InventoryError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut links = Vec::new();
    loop {
        // SAFETY: recv into `buf`, alive and of the length given.
        let len = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if len < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(InventoryError::Socket {
                netns: name.to_string(),
                source: e,
            });
        }
        let mut rest = &buf[..len as usize];
        while !rest.is_empty() {
            let Ok(frame) = NetlinkBuffer::new_checked(rest) else {
                tracing::warn!("malformed link dump datagram in netns {name}, rest skipped");
                break;
            };
            let size = frame.length() as usize;
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..size]) {
                Ok(message) => match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        links.extend(parse_link(&link));
                    }
                    NetlinkPayload::Done(_) => return Ok(links),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(InventoryError::Netlink {
                            netns: name.to_string(),
                            what: "link dump".into(),
                            source: rtnetlink::Error::NetlinkError(e),
                        })
                    }
                    _ => {}
                },
                Err(e) => tracing::warn!("undecodable link message in netns {name} skipped: {e}"),
            }
            // Messages are 4-byte aligned within a datagram.
            rest = rest.get(size.next_multiple_of(4)..).unwrap_or_default();
        }
    }
}
