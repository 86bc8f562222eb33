//! Moves a device between the host netns and another as fast as rtnetlink allows.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec};

/// A handle whose socket lives in the netns at `path`.
async fn handle_in(path: &Path) -> Result<Handle, String> {
    let runtime = tokio::runtime::Handle::current();
    let (connection, handle, _) = netguard::netns::run_in(path, move || {
        let _guard = runtime.enter();
        rtnetlink::new_connection()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot open rtnetlink in {}: {e}", path.display()))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Moves `name` from the host to `netns` and back until `count` moves were made.
pub async fn back_and_forth(name: &str, netns: &str, count: usize) -> Result<Duration, String> {
    let host = handle_in(Path::new("/proc/self/ns/net")).await?;
    let guest = handle_in(Path::new(netns)).await?;
    let there = netguard::netns::open(Path::new(netns)).map_err(|e| e.to_string())?;
    let home = netguard::netns::open(Path::new("/proc/self/ns/net")).map_err(|e| e.to_string())?;
    let link = host
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(|e| format!("cannot find {name}: {e}"))?
        .ok_or(format!("no link {name}"))?;
    let index = link.header.index;
    let start = Instant::now();
    for n in 0..count {
        let (handle, target) = if n % 2 == 0 {
            (&host, &there)
        } else {
            (&guest, &home)
        };
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(target.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| format!("move {n} of {name}: {e}"))?;
    }
    Ok(start.elapsed())
}
