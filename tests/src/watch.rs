//! The tracer as a test watches it: the events about the test's own namespaces.

use std::time::Duration;

use netguard::event::{Event, Place};
use netguard::trace::{BackendChoice, TraceOptions, Tracer};

use crate::World;

/// How long a test waits for an event before failing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running tracer with a world's host standing in for init_net, and the events it gave
/// about the world's containers (other tests run in parallel and make their own).
pub struct EventWatch {
    pub tracer: Tracer,
    ours: Vec<u64>,
    pub seen: Vec<Event>,
}

impl EventWatch {
    /// Starts the tracer on `world`. The inodes of its containers are read now: a test may
    /// delete one later and still expect its events.
    pub async fn start(choice: BackendChoice, world: &World) -> EventWatch {
        let options = TraceOptions {
            host_netns: Some(world.host.path()),
        };
        let tracer = Tracer::start(choice, options)
            .await
            .expect("start the tracer");
        EventWatch {
            tracer,
            ours: world.containers().map(|ns| ns.inode()).collect(),
            seen: Vec::new(),
        }
    }

    /// Counts events about `netns` (made after the start) as ours too.
    pub fn also(&mut self, netns: &crate::TestNetns) {
        self.ours.push(netns.inode());
    }

    /// The next event about our namespaces that `wanted` accepts; panics after
    /// [`EVENT_TIMEOUT`] with `what` and every event seen about them.
    pub async fn expect(&mut self, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.tracer.next()).await;
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => panic!(
                    "the tracer stopped while waiting for {what}; seen:\n{}",
                    self.seen_lines()
                ),
                Err(_) => panic!(
                    "no {what} within {EVENT_TIMEOUT:?}; seen:\n{}",
                    self.seen_lines()
                ),
            };
            let place_is_ours = |p: &Option<Place>| {
                p.as_ref()
                    .is_some_and(|p| self.ours.contains(&p.netns.inode))
            };
            if !(place_is_ours(&event.from) || place_is_ours(&event.to)) {
                continue;
            }
            self.seen.push(event.clone());
            if wanted(&event) {
                return event;
            }
        }
    }

    fn seen_lines(&self) -> String {
        if self.seen.is_empty() {
            return "  (nothing)".into();
        }
        self.seen
            .iter()
            .map(|e| format!("  {}", serde_json::to_string(e).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether a place is `name` in the netns with that inode.
pub fn is_at(place: &Option<Place>, name: &str, netns: u64) -> bool {
    place
        .as_ref()
        .is_some_and(|p| p.name.as_deref() == Some(name) && p.netns.inode == netns)
}
