//! Host tests of an agent whose restore pass is stuck: the netns path of a guarded link is a
//! FIFO, whose open(2) blocks until a writer comes (as a file on a hung filesystem would). The
//! tracer and `status` must go on meanwhile, and two signals must stop the agent at once.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use netguard_tests::{wait_until, AgentProcess, Netguard, TestNetns, World};
use serde_json::Value;

/// The bridged world, its container's eth0 learned, an agent running.
struct Stalled {
    w: World,
    ng: Netguard,
    agent: Option<AgentProcess>,
}

impl Stalled {
    /// Learns the container, starts the agent, then puts a FIFO where the container's netns
    /// was and waits until a pass is stuck opening it (no pass ends for 3 intervals).
    fn new(tag: &str) -> Stalled {
        let w = World::bridged(tag).with(&["d"]);
        // A second container, whose eth0 (a veth to the host's vd0) is learned too.
        w.host.ip(&[
            "link",
            "add",
            "vd0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &w.ns("d").name,
        ]);
        let ng = Netguard::new(&w);
        for ns in [w.c(), w.ns("d")] {
            ng.run_ok(&["learn", "--netns", &ns.path().display().to_string()]);
        }
        let agent = Some(ng.start_agent());
        let s = Stalled { w, ng, agent };
        s.w.c().delete();
        mkfifo(s.w.c());
        let pid = s.agent.as_ref().expect("agent").pid();
        wait_until(
            "a pass is stuck opening the FIFO",
            || blocked_in_fifo_open(pid),
            || s.ng.log(),
        );
        s
    }

    fn agent(&mut self) -> &mut AgentProcess {
        self.agent.as_mut().expect("agent running")
    }

    /// Lets the stuck open return (a writer arrives), then puts a netns back at the path.
    fn unstall(&self) {
        let path = self.w.c().path();
        // Opening for writing wakes every reader blocked in open(2); nonblocking, so that
        // no reader left is no wait.
        let _ = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        std::fs::remove_file(&path).expect("remove the FIFO");
        self.w.c().add();
    }
}

/// Whether a thread of `pid` waits in open(2) for a FIFO's writer. The agent gives such an
/// open 10 s: the test has that long while the pass is stuck.
fn blocked_in_fifo_open(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| w == "wait_for_partner")
    })
}

fn mkfifo(ns: &TestNetns) {
    let path = CString::new(ns.path().as_os_str().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// The status row of eth0 in `ns`.
fn eth0_row(status: &Value, ns: &TestNetns) -> Value {
    let netns = ns.path().display().to_string();
    status["rows"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["name"] == "eth0" && r["netns"] == netns.as_str())
        })
        .cloned()
        .unwrap_or_else(|| panic!("no eth0 row for {netns}: {status}"))
}

#[test]
fn events_are_recorded_while_a_pass_is_stuck() {
    let s = Stalled::new("st");
    let before = s.ng.status_json();
    let events = before["agent"]["events"].as_u64().expect("events");
    let passes = before["agent"]["passes"].as_u64().expect("passes");

    // The second container's guarded eth0 goes while the pass is stuck on the first.
    let d = s.w.ns("d");
    d.ip(&["link", "del", "eth0"]);
    let asked = Instant::now();
    wait_until(
        "status shows the event about d's eth0 while the pass is stuck",
        || {
            let now = s.ng.status_json();
            let last = eth0_row(&now, d)["last_event"]["what"].clone();
            now["agent"]["events"].as_u64() > Some(events)
                && last
                    .as_str()
                    .is_some_and(|w| w.starts_with("unregister eth0"))
        },
        || s.ng.log(),
    );
    let now = s.ng.status_json();
    assert_eq!(
        now["agent"]["passes"].as_u64(),
        Some(passes),
        "the pass was still stuck when the event showed: {now}"
    );
    eprintln!(
        "event shown by status {:?} after it happened, pass stuck",
        asked.elapsed()
    );

    s.unstall();
    wait_until(
        "the container pings the bridge through its re-created eth0",
        || s.w.c().ping("198.18.1.1"),
        || s.ng.log(),
    );
}

#[test]
fn a_second_signal_stops_a_stuck_agent_at_once_and_the_ledger_opens() {
    let mut s = Stalled::new("sg");
    s.agent().sigterm();
    // The first lets the pass finish (up to 10 s): still running a second later.
    assert!(
        s.agent().exited_within(Duration::from_secs(1)).is_none(),
        "the agent waits for the pass under way: {}",
        s.ng.log()
    );
    let second = Instant::now();
    s.agent().sigterm();
    let exit = s
        .agent()
        .exited_within(Duration::from_secs(2))
        .unwrap_or_else(|| panic!("no exit 2 s after the second signal: {}", s.ng.log()));
    eprintln!("second signal -> exit ({exit}) in {:?}", second.elapsed());
    assert_eq!(exit.code(), Some(1), "{}", s.ng.log());
    assert!(s.ng.log().contains("stopped at once"), "{}", s.ng.log());
    s.agent = None;

    s.unstall();
    // Without an agent, `status` opens the ledger itself: it reads fine, nothing rebuilt.
    let ran = s.ng.run(&["status"]);
    assert!(
        !ran.stderr.contains("unusable") && ran.stdout.contains("eth0"),
        "{ran}"
    );
    s.agent = Some(s.ng.start_agent());
    wait_until(
        "the restarted agent re-creates the container's eth0",
        || s.w.c().ping("198.18.1.1"),
        || s.ng.log(),
    );
}
