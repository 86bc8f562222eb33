//! Running netguard like any node agent, tested with the real tools: Debian's Prometheus
//! scraping an agent (in a test world, loopback only) while it repairs a veth, `promtool` on
//! the scrape, JSON log lines matching `status --json`, and the systemd notifications seen
//! through a `NOTIFY_SOCKET` of the test's own.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netguard_tests::ops::{free_loopback, http_get, workspace, Prometheus};
use netguard_tests::{link, wait_until, Netguard, World};
use serde_json::Value;

#[test]
fn prometheus_scrapes_the_agent_and_sees_a_veth_restored() {
    let w = World::bridged("pm");
    let ng = Netguard::new(&w);
    let c = w.c().path().display().to_string();
    ng.run_ok(&["learn", "--netns", &c]);
    let metrics = free_loopback();
    let _agent = ng.start_agent_with(&["--metrics", &metrics.to_string(), "--log-format", "json"]);
    let rules = workspace().join("deploy/prometheus/netguard-alerts.yml");
    let prometheus = Prometheus::start(&w.dir.0, metrics, &rules);
    prometheus.wait_value(r#"up{job="netguard"}"#, |v| v == 1.0);
    let restored = r#"netguard_restores_total{job="netguard",case="veth",outcome="restored"}"#;
    assert_eq!(prometheus.wait_value(restored, |_| true), 0.0);
    prometheus.wait_value(r#"netguard_guarded{kind="veth",state="intact"}"#, |v| {
        v >= 1.0
    });

    // A container reboot: its netns and the veth pair go, a new netns comes at the path.
    let eth0 = link(w.c(), "eth0");
    w.c().recreate();
    wait_until(
        "eth0 is back in the re-created netns",
        || {
            w.c()
                .ip_json(&["link", "show"])
                .to_string()
                .contains("\"eth0\"")
        },
        || ng.explain(&[&w.host, w.c()]),
    );
    assert_eq!(link(w.c(), "eth0")["address"], eth0["address"]);

    // Seen by Prometheus with its latency (from the bind mount appearing to verified).
    let repairs = prometheus.wait_value(restored, |v| v >= 1.0);
    let count = r#"netguard_restore_latency_seconds_count{case="veth"}"#;
    assert_eq!(prometheus.wait_value(count, |v| v >= repairs), repairs);
    let latency = prometheus.wait_value(
        r#"netguard_restore_latency_seconds_sum{case="veth"}"#,
        |v| v > 0.0,
    ) / repairs;
    assert!(latency < 5.0, "restore latency {latency} s");
    eprintln!(
        "Prometheus saw the veth restored, latency {:.1} ms",
        latency * 1e3
    );
    assert!(
        prometheus.wait_value("sum(netguard_tracer_events_total)", |v| v > 0.0) > 0.0,
        "tracer events counted"
    );
    assert_eq!(
        prometheus
            .query(r#"netguard_tracer_backend_info{backend="netlink"}"#)
            .len(),
        1
    );

    // The alert rules loaded and evaluate cleanly against the live series.
    let rules = prometheus.api("rules");
    let loaded: Vec<&Value> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .expect("rule group")
        .iter()
        .collect();
    assert_eq!(loaded.len(), 6, "{rules:#}");
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule:#}");
    }
    // Every dashboard query is PromQL Prometheus accepts.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("deploy/grafana/netguard-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            prometheus.query(
                &expr
                    .replace("$instance", ".*")
                    .replace("$__rate_interval", "1m"),
            );
        }
    }

    // promtool lints a live scrape.
    let (code, scrape) = http_get(metrics, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), scrape.as_bytes())
        .expect("feed promtool");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{scrape}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The restore's JSON log line carries the fields of its `status --json` row.
    let row = ng.status_row(w.c(), "eth0").expect("eth0 in status");
    let line: Value = ng
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["event"] == "restore" && l["name"] == "eth0")
        .unwrap_or_else(|| panic!("no restore line for eth0:\n{}", ng.log()));
    for field in ["kind", "name", "netns", "mac", "state", "since"] {
        assert_eq!(line[field], row[field], "{field}: {line:#} vs {row:#}");
    }
    assert!(
        line["latency_seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{line:#}"
    );
}

/// The datagrams a service manager would get, read from a socket of the test's own.
struct NotifyListener {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl NotifyListener {
    fn bind(path: &std::path::Path) -> NotifyListener {
        let socket = UnixDatagram::bind(path).expect("bind NOTIFY_SOCKET");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        NotifyListener {
            socket,
            seen: Vec::new(),
        }
    }

    /// Reads until `wanted` of the messages contain `what`, for up to 10 s.
    fn expect(&mut self, what: &str, wanted: usize) -> Duration {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        while self.seen.iter().filter(|m| m.contains(what)).count() < wanted {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{wanted} x {what} expected; got {:?}",
                self.seen
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        started.elapsed()
    }
}

#[test]
fn agent_tells_its_service_manager_ready_pings_the_watchdog_and_says_stopping() {
    let w = World::new("sd");
    let ng = Netguard::new(&w);
    let socket = w.dir.0.join("notify.sock");
    let mut listener = NotifyListener::bind(&socket);
    // systemd passes WATCHDOG_PID as the service's own pid: a shell that execs keeps its pid.
    let command = ng.command(&["agent", "--backend", "netlink"]);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(command.get_program())
        .args(command.get_args())
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(ng.log_path()).expect("agent log"))
        .spawn()
        .expect("spawn the agent");
    let ready = listener.expect("READY=1", 1);
    eprintln!("READY=1 after {ready:?}");
    // The agent answers as soon as it said ready.
    assert_eq!(ng.status_json()["agent"]["pid"], child.id());
    // 400 ms period: pings at least every 200 ms.
    let pings = listener.expect("WATCHDOG=1", 5);
    assert!(pings < Duration::from_secs(2), "5 pings took {pings:?}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    listener.expect("STOPPING=1", 1);
    assert!(child.wait().expect("agent exit").success(), "{}", ng.log());

    // Without WATCHDOG_USEC: ready, and no pings.
    let socket2 = w.dir.0.join("notify2.sock");
    let mut quiet = NotifyListener::bind(&socket2);
    let mut child = ng
        .command(&["agent", "--backend", "netlink"])
        .env("NOTIFY_SOCKET", &socket2)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the agent");
    quiet.expect("READY=1", 1);
    std::thread::sleep(Duration::from_millis(500));
    let mut buf = [0u8; 4096];
    while let Ok(n) = quiet.socket.recv(&mut buf) {
        quiet
            .seen
            .push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        !quiet.seen.iter().any(|m| m.contains("WATCHDOG=1")),
        "{:?}",
        quiet.seen
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("agent exit").success());
}
