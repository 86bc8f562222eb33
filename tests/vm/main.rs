//! The suite that runs inside the VM guest (as its init's child, root, e1000 NICs eth0..eth2
//! in init_net). One line per verdict on the console, `NGVM PASS name` or
//! `NGVM FAIL name: why`, read by `cargo xtask vm-test`.

mod adopt;
mod agent;
mod bench;
mod causes;
mod cni;
mod faults;
mod moves;
mod oci;
mod pods;
mod scenarios;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netguard::event::Event;
use netguard::trace::{BackendChoice, BackendKind, TraceOptions, Tracer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// What the scenarios see of a running tracer: every event so far, and its drop count.
pub struct Trace {
    events: Arc<Mutex<Vec<Event>>>,
    dropped_requests: mpsc::Sender<oneshot::Sender<u64>>,
    reader: JoinHandle<()>,
    pub backend: BackendKind,
}

impl Trace {
    async fn start(backend: BackendKind) -> Result<Trace, String> {
        let mut tracer = Tracer::start(BackendChoice::Only(backend), TraceOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let (dropped_requests, mut requests) = mpsc::channel::<oneshot::Sender<u64>>(4);
        let sink = events.clone();
        let reader = tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = tracer.next() => match event {
                        Some(event) => sink.lock().unwrap().push(event),
                        None => break,
                    },
                    request = requests.recv() => match request {
                        Some(reply) => { let _ = reply.send(tracer.dropped()); }
                        None => break,
                    },
                }
            }
        });
        Ok(Trace {
            events,
            dropped_requests,
            reader,
            backend,
        })
    }

    /// Detaches the tracer and waits until it is gone (dropping a `Trace` detaches it a little
    /// later, which a benchmark of the next contender must not overlap).
    pub async fn stop(self) {
        drop(self.dropped_requests);
        let _ = self.reader.await;
    }

    /// How many events since `mark` match `pred`.
    pub fn count(&self, mark: usize, pred: impl Fn(&Event) -> bool) -> usize {
        self.events.lock().unwrap()[mark..]
            .iter()
            .filter(|e| pred(e))
            .count()
    }

    /// Index of the next event: scenarios look only at what came after their own mark.
    pub fn mark(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Events since `mark` matching `pred`, waiting up to `timeout` for at least `count`.
    pub async fn wait_for(
        &self,
        mark: usize,
        count: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<Vec<Event>, String> {
        let start = Instant::now();
        loop {
            // Counted while waiting, copied once found.
            let found = self.count(mark, &pred);
            if found >= count {
                return Ok(self.events.lock().unwrap()[mark..]
                    .iter()
                    .filter(|e| pred(e))
                    .cloned()
                    .collect());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "waited {}s for {count} x {what}, found {found}; events since mark:\n{}",
                    timeout.as_secs(),
                    self.dump(mark)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Events since `mark` as JSON lines (the last 40), for failure messages.
    pub fn dump(&self, mark: usize) -> String {
        let events = self.events.lock().unwrap();
        let tail = &events[mark..];
        tail[tail.len().saturating_sub(40)..]
            .iter()
            .map(|e| format!("    {}", serde_json::to_string(e).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub async fn dropped(&self) -> u64 {
        let (tx, rx) = oneshot::channel();
        if self.dropped_requests.send(tx).await.is_err() {
            return u64::MAX;
        }
        rx.await.unwrap_or(u64::MAX)
    }
}

struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn summary(&self) {
        println!(
            "NGVM SUMMARY {} passed, {} failed",
            self.passed, self.failed
        );
    }

    fn verdict(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("NGVM PASS {name}");
            }
            Err(why) => {
                self.failed += 1;
                // Indented continuation lines keep the console readable; only the first
                // line carries the verdict.
                println!("NGVM FAIL {name}: {why}");
            }
        }
    }
}

/// What the guest's init asked for.
struct Args {
    backends: Vec<BackendKind>,
    filter: Option<String>,
    /// Run the benchmarks with these trial counts instead of the suite.
    bench: Option<bench::results::Plan>,
    /// Run this many fault runs per repair kind instead of the suite.
    faults: Option<u32>,
}

fn parse_args() -> Args {
    let mut parsed = Args {
        backends: vec![BackendKind::Kprobe, BackendKind::Fentry],
        filter: None,
        bench: None,
        faults: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--backends" => {
                parsed.backends = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|b| match b.parse() {
                        Ok(BackendChoice::Only(kind)) => Some(kind),
                        _ => {
                            println!("NGVM FAIL args: unknown backend {b}");
                            None
                        }
                    })
                    .collect()
            }
            "--filter" => parsed.filter = args.next(),
            "--bench" => match args.next().unwrap_or_default().parse() {
                Ok(plan) => parsed.bench = Some(plan),
                Err(why) => println!("NGVM FAIL args: --bench: {why}"),
            },
            "--faults" => match args.next().unwrap_or_default().parse() {
                Ok(runs) => parsed.faults = Some(runs),
                Err(why) => println!("NGVM FAIL args: --faults: {why}"),
            },
            other => println!("NGVM FAIL args: unknown argument {other}"),
        }
    }
    parsed
}

#[tokio::main]
async fn main() {
    let Args {
        backends,
        filter,
        bench,
        faults,
    } = parse_args();
    let mut report = Report {
        passed: 0,
        failed: 0,
    };
    if let Some(plan) = bench {
        for (name, result) in bench::run(plan, &backends).await {
            report.verdict(&name, result);
        }
        report.summary();
        return;
    }
    if let Some(runs) = faults {
        for kind in faults::KINDS {
            for (name, result) in faults::run_kind(kind, runs, false).await {
                report.verdict(&name, result);
            }
        }
        report.summary();
        return;
    }
    for (i, backend) in backends.into_iter().enumerate() {
        // `--filter a,b`: the scenarios whose name contains any of them.
        let wanted = |name: &str| {
            filter
                .as_deref()
                .is_none_or(|f| f.split(',').any(|part| name.contains(part)))
        };
        let trace = match Trace::start(backend).await {
            Ok(trace) => trace,
            Err(why) => {
                report.verdict(&format!("{backend}/attach"), Err(why));
                continue;
            }
        };
        report.verdict(&format!("{backend}/attach"), Ok(()));
        for (name, result) in scenarios::run_all(&trace, &wanted).await {
            report.verdict(&format!("{backend}/{name}"), result);
        }
        drop(trace);
        if wanted("cli-record-report") {
            let result = scenarios::cli_record_report(backend).await;
            report.verdict(&format!("{backend}/cli-record-report"), result);
        }
        // The 6.1 guest, ~3x slower under TCG, runs the agent scenarios with its first backend
        // only (its trace scenarios prove each backend); the 6.12 guest runs them with each.
        if i > 0 && faults::slow_guest() {
            continue;
        }
        for (name, result) in agent::run_all(backend, &wanted).await {
            report.verdict(&format!("{backend}/{name}"), result);
        }
        for (name, result) in adopt::run_all(backend, &wanted).await {
            report.verdict(&format!("{backend}/{name}"), result);
        }
        if wanted("oci-relend") {
            let result = oci::relend_by_container(backend).await;
            report.verdict(&format!("{backend}/oci-relend"), result);
            scenarios::cleanup();
        }
        // One kill run per repair kind, once (the agents trace with netlink whatever the
        // backend), and not in the 6.1 guest, ~3x slower under TCG, to keep the suite short:
        // `cargo xtask faults` runs the many on both.
        if i == 0 && wanted("faults") && !faults::slow_guest() {
            for kind in faults::KINDS {
                for (name, result) in faults::run_kind(kind, 1, true).await {
                    report.verdict(&name, result);
                }
            }
        }
    }
    report.summary();
}
