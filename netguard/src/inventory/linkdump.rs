//! The host's link dump on a socket of its own, read one datagram at a time (see
//! [`crate::rtnl::dump`]): the host holds every container's host side.

use std::fs::File;
use std::path::Path;

use super::conn::socket_in;
use super::snapshot::{parse_link, LiveLink};
use super::InventoryError;

/// Every link of the netns `netns` (opened from `path`), without statistics.
pub(super) async fn links(netns: &File, path: &Path) -> Result<Vec<LiveLink>, InventoryError> {
    let socket = socket_in(netns, path).await?;
    // The reads block (the kernel answers at once); they run off the async workers.
    let read =
        tokio::task::spawn_blocking(move || crate::rtnl::dump::links(&socket, None, parse_link))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    read.map_err(|source| InventoryError::LinkDump {
        netns: path.display().to_string(),
        source,
    })
}
