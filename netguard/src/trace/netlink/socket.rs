//! The two rtnetlink sockets of the backend, both in the host netns: one listening to
//! RTNLGRP_LINK and RTNLGRP_NSID of every netns that has an nsid there, one for requests
//! (nsid assignment, link dumps of other namespaces by nsid).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_ECHO, NLM_F_REQUEST};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::Socket;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::track::{nsid_of, Seen};
use crate::rtnl::listen::{listen_all_nsid, parse_datagram, recv_tagged, Datagram};

/// Notifications are queued here while we dump or wait on a full event channel; what does
/// not fit is an overrun (ENOBUFS).
const RECEIVE_BUFFER: libc::c_int = 8 << 20;

/// One datagram holds one notification skb (a few KiB for a link); this is ample.
const DATAGRAM: usize = 64 << 10;

/// The connection the request socket runs on; spawn it.
pub(super) type Connection = rtnetlink::proto::Connection<RouteNetlinkMessage>;

/// Opens both sockets in the calling thread's netns. Must run inside a tokio runtime context.
pub(super) fn open() -> io::Result<(Socket, Connection, Requests)> {
    let listener = listening_socket()?;
    let (connection, handle, _unsolicited) = rtnetlink::new_connection()?;
    let dumps = Arc::new(Socket::new(NETLINK_ROUTE)?);
    Ok((listener, connection, Requests { handle, dumps }))
}

fn listening_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    let groups = [libc::RTNLGRP_LINK, libc::RTNLGRP_NSID];
    listen_all_nsid(&mut socket, &groups, RECEIVE_BUFFER)?;
    Ok(socket)
}

/// What one read of the listening socket gave.
pub(super) enum Received {
    /// Messages, each with the nsid of the netns it came from (`None`: the host netns).
    Messages(Vec<(Option<i32>, RouteNetlinkMessage)>),
    /// The kernel dropped notifications for us (ENOBUFS, or one did not fit our buffer).
    Overrun,
}

/// The listening socket.
pub(super) struct Listener {
    socket: AsyncFd<Socket>,
    buf: Vec<u8>,
}

impl Listener {
    /// Registers the socket from [`open`] with the runtime.
    pub(super) fn new(socket: Socket) -> io::Result<Listener> {
        // SAFETY: the Socket owns its fd until it is dropped with the AsyncFd, and always
        // reports that same fd.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        Ok(Listener {
            socket,
            buf: vec![0; DATAGRAM],
        })
    }

    /// The next datagram. Cancel-safe: a datagram is read only once it is ready.
    pub(super) async fn recv(&mut self) -> io::Result<Received> {
        loop {
            let mut ready = self.socket.readable().await?;
            let fd = self.socket.get_ref().as_raw_fd();
            match ready.try_io(|_| read(fd, &mut self.buf)) {
                Ok(received) => return received,
                Err(_would_block) => continue,
            }
        }
    }

    /// The next datagram if one is queued already.
    pub(super) fn try_recv(&mut self) -> Option<io::Result<Received>> {
        match read(self.socket.get_ref().as_raw_fd(), &mut self.buf) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => None,
            other => Some(other),
        }
    }
}

fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    match recv_tagged(fd, buf) {
        Ok(Datagram {
            truncated: true, ..
        }) => Ok(Received::Overrun),
        Ok(Datagram { len, nsid, .. }) => Ok(Received::Messages(
            parse_datagram(&buf[..len], Seen::ATTRIBUTES)
                .into_iter()
                .map(|m| (nsid, m))
                .collect(),
        )),
        Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => Ok(Received::Overrun),
        Err(err) => Err(err),
    }
}

/// Requests to the kernel from the host netns.
pub(super) struct Requests {
    handle: rtnetlink::Handle,
    /// Link dumps, read one datagram at a time (see [`crate::rtnl::dump`]); one at a time
    /// (`&mut self`).
    dumps: Arc<Socket>,
}

impl Requests {
    /// The nsid of the netns `file` opens, assigning one (in the host netns) if it has none.
    pub(super) async fn nsid_assigned(&mut self, netns: &File) -> io::Result<i32> {
        let mut assign = NsidMessage::default();
        assign.attributes = vec![
            NsidAttribute::Fd(netns.as_raw_fd() as u32),
            NsidAttribute::Id(-1),
        ];
        // With NLM_F_ECHO the kernel answers with the id it picked; EEXIST: it had one.
        let echoed = match self
            .call(
                RouteNetlinkMessage::NewNsId(assign),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO,
            )
            .await
        {
            Ok(replies) => nsid_in(&replies),
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => None,
            Err(err) => return Err(err),
        };
        let nsid = match echoed {
            Some(id) => Some(id),
            None => self.nsid(netns).await?,
        };
        nsid.ok_or_else(|| io::Error::other("the kernel assigned no nsid"))
    }

    /// The nsid of the netns `file` opens, if it has one in the host netns.
    pub(super) async fn nsid(&mut self, netns: &File) -> io::Result<Option<i32>> {
        let mut query = NsidMessage::default();
        query.attributes = vec![NsidAttribute::Fd(netns.as_raw_fd() as u32)];
        Ok(nsid_in(
            &self
                .call(RouteNetlinkMessage::GetNsId(query), NLM_F_REQUEST)
                .await?,
        ))
    }

    /// Every link of the host netns (`None`) or of the netns with that nsid, boiled down.
    pub(super) async fn dump_links(&mut self, nsid: Option<i32>) -> io::Result<Vec<Seen>> {
        let socket = self.dumps.clone();
        // The reads block (the kernel answers at once); they run off the async workers.
        tokio::task::spawn_blocking(move || {
            crate::rtnl::dump::links(&socket, nsid, |m| Some(Seen::read(m)))
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    async fn call(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        let mut responses = self
            .handle
            .request(request)
            .map_err(|_| io::Error::other("the rtnetlink request socket is closed"))?;
        let mut replies = Vec::new();
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::InnerMessage(reply) => replies.push(reply),
                NetlinkPayload::Error(err) if err.code.is_some() => return Err(err.to_io()),
                _ => {}
            }
        }
        Ok(replies)
    }
}

/// The assigned nsid an RTM_NEWNSID reply carries (the kernel says -1 for none).
fn nsid_in(replies: &[RouteNetlinkMessage]) -> Option<i32> {
    replies
        .iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewNsId(msg) => nsid_of(msg),
            _ => None,
        })
        .find(|id| *id >= 0)
}
