//! Sockets that hear the link, address and route notifications of the host netns and of
//! every netns the host has an nsid for (NETLINK_LISTEN_ALL_NSID), each datagram tagged with
//! the netns it came from. Used by the netlink tracer and by the restorer's change watch.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use netlink_packet_core::{
    DecodeError, Emitable, NetlinkBuffer, NetlinkMessage, NetlinkPayload, NlasIterator,
    ParseableParametrized,
};
use netlink_packet_route::link::{LinkAttribute, LinkHeader, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr};

/// Binds `socket`, joins `groups` of every netns with an nsid here, and makes it non-blocking
/// with a receive queue of `queue` bytes (past net.core.rmem_max when we may).
pub fn listen_all_nsid(socket: &mut Socket, groups: &[u32], queue: libc::c_int) -> io::Result<()> {
    socket.bind(&SocketAddr::new(0, 0))?;
    for group in groups {
        socket.add_membership(*group)?;
    }
    socket.set_listen_all_namespaces(true)?;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&queue as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        socket.set_rx_buf_sz(queue)?;
    }
    socket.set_non_blocking(true)
}

/// One datagram read by [`recv_tagged`].
pub struct Datagram {
    pub len: usize,
    /// It did not fit the buffer (the kernel cut it short).
    pub truncated: bool,
    /// The netns it came from (`None`: the socket's own).
    pub nsid: Option<i32>,
}

/// One `recvmsg` that never waits, returning the NETLINK_LISTEN_ALL_NSID tag the kernel
/// attaches to notifications from other namespaces.
pub fn recv_tagged(fd: RawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = size_of_val(&control) as _;
    // SAFETY: the header points at `buf` and `control`, both alive and of the sizes given.
    let len = unsafe { libc::recvmsg(fd, &mut header, libc::MSG_DONTWAIT) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut nsid = None;
    // SAFETY: the kernel filled the control buffer and msg_controllen; the CMSG macros walk it
    // within those bounds, and the data is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            let level_type = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if level_type == (libc::SOL_NETLINK, libc::NETLINK_LISTEN_ALL_NSID) {
                nsid = Some(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<i32>(),
                ));
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    Ok(Datagram {
        len: len as usize,
        truncated: header.msg_flags & libc::MSG_TRUNC != 0,
        nsid,
    })
}

/// The rtnetlink messages in one datagram; what does not decode is logged and skipped. Of a
/// link message only the attributes (`IFLA_*`) in `link_attributes` are decoded: the rest (IPv6
/// and bridge port settings, statistics) is most of its decoding, and a listener hears every
/// link message of every netns.
pub fn parse_datagram(mut bytes: &[u8], link_attributes: &[u16]) -> Vec<RouteNetlinkMessage> {
    let mut messages = Vec::new();
    while !bytes.is_empty() {
        let frame = match NetlinkBuffer::new_checked(bytes) {
            Ok(frame) => frame,
            Err(err) => {
                tracing::warn!("malformed rtnetlink datagram, rest skipped: {err}");
                break;
            }
        };
        let len = frame.length() as usize;
        let decoded = match frame.message_type() {
            libc::RTM_NEWLINK => {
                link_message(frame.payload(), link_attributes).map(RouteNetlinkMessage::NewLink)
            }
            libc::RTM_DELLINK => {
                link_message(frame.payload(), link_attributes).map(RouteNetlinkMessage::DelLink)
            }
            _ => match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
                Ok(NetlinkMessage {
                    payload: NetlinkPayload::InnerMessage(message),
                    ..
                }) => Ok(message),
                Ok(_) => Err(None),
                Err(err) => Err(Some(err)),
            },
        };
        match decoded {
            Ok(message) => messages.push(message),
            Err(None) => {}
            Err(Some(err)) => tracing::warn!("undecodable rtnetlink message skipped: {err}"),
        }
        // Messages are 4-byte aligned within a datagram.
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    messages
}

/// A link message with only the attributes whose type is in `keep`.
fn link_message(payload: &[u8], keep: &[u16]) -> Result<LinkMessage, Option<DecodeError>> {
    let header = LinkHeader::parse(payload).map_err(Some)?;
    let mut link = LinkMessage::default();
    for nla in NlasIterator::new(payload.get(header.buffer_len()..).unwrap_or_default()) {
        let nla = nla.map_err(Some)?;
        if keep.contains(&nla.kind()) {
            link.attributes.push(
                LinkAttribute::parse_with_param(&nla, header.interface_family).map_err(Some)?,
            );
        }
    }
    link.header = header;
    Ok(link)
}

/// `message` as the kernel would send it: for tests of what reads datagrams.
#[cfg(test)]
pub(crate) fn bytes_of(message: RouteNetlinkMessage) -> Vec<u8> {
    let mut message = NetlinkMessage::from(message);
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME_ONLY: &[u16] = &[libc::IFLA_IFNAME];

    #[test]
    fn a_datagram_yields_every_message_and_survives_garbage() {
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.attributes = vec![LinkAttribute::IfName("veth7".into())];
        let mut datagram = bytes_of(RouteNetlinkMessage::NewLink(link.clone()));
        datagram.extend(bytes_of(RouteNetlinkMessage::DelLink(link.clone())));
        let messages = parse_datagram(&datagram, NAME_ONLY);
        assert_eq!(
            messages,
            vec![
                RouteNetlinkMessage::NewLink(link.clone()),
                RouteNetlinkMessage::DelLink(link)
            ]
        );

        // A length field past the end, a message cut short, an attribute longer than its
        // message: skipped, no panic.
        let mut too_long = datagram.clone();
        too_long[0] = 0xff;
        assert!(parse_datagram(&too_long, NAME_ONLY).is_empty());
        assert_eq!(
            parse_datagram(&datagram[..datagram.len() - 3], NAME_ONLY).len(),
            1
        );
        let mut bad_attr = bytes_of(RouteNetlinkMessage::NewLink(LinkMessage::default()));
        bad_attr.extend([64, 0, 3, 0]);
        let len = bad_attr.len() as u32;
        bad_attr[..4].copy_from_slice(&len.to_ne_bytes());
        assert!(parse_datagram(&bad_attr, NAME_ONLY).is_empty());
    }

    #[test]
    fn a_link_message_keeps_only_the_attributes_asked_for() {
        let mut link = LinkMessage::default();
        link.header.index = 9;
        link.attributes = vec![
            LinkAttribute::Mtu(1400),
            LinkAttribute::IfName("eth9".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9]),
        ];
        let datagram = bytes_of(RouteNetlinkMessage::NewLink(link.clone()));
        link.attributes = vec![LinkAttribute::IfName("eth9".into())];
        assert_eq!(
            parse_datagram(&datagram, NAME_ONLY),
            vec![RouteNetlinkMessage::NewLink(link)]
        );
    }
}
