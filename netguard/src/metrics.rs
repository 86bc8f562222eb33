//! The agent's Prometheus metrics, served in the text exposition format (0.0.4, which both the
//! Prometheus server and `promtool check metrics` read) at `/metrics` on `--metrics ADDR`.
//!
//! Names follow Prometheus conventions: `netguard_` prefix, base units (`_seconds`), `_total`
//! on counters, `_info` gauges fixed at 1 for build and backend.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metric definition: {0}")]
    Define(#[from] prometheus::Error),
}

/// Restore latencies are milliseconds for a rename, up to seconds when a netns is slow to come
/// back: buckets from 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A pass over 10,000 links takes up to about a second; a save of their ledger some 100 ms.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The repair cases: a refunded NIC renamed home, and the link kinds re-created.
const CASES: [&str; 4] = ["nic", "veth", "vlan", "macvlan"];

/// Every metric the agent keeps. Cheap to update: callers hold it in an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// Guarded NICs and links by kind (`nic`, `veth`, `vlan`, `macvlan`) and ledger state.
    pub guarded: IntGaugeVec,
    /// Repairs by case (the target's kind) and outcome (`restored`, `failed`).
    pub restores: IntCounterVec,
    /// From the event that woke the agent to the repair read back, by case.
    pub restore_latency: HistogramVec,
    /// Guarded things newly found in conflict (another device holds their name), by case.
    pub conflicts: IntCounterVec,
    pub tracer_events: IntCounterVec,
    pub tracer_dropped: IntCounterVec,
    pub pass_duration: Histogram,
    pub ledger_save_duration: Histogram,
    pub backend_info: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let build_info = gauge_vec(
            "netguard_build_info",
            "The running netguard's version (always 1).",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let restore_latency = HistogramVec::new(
            HistogramOpts::new(
                "netguard_restore_latency_seconds",
                "Time from the event that triggered a repair to the repair verified, by case.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["case"],
        )?;
        registry.register(Box::new(restore_latency.clone()))?;
        let metrics = Metrics {
            guarded: gauge_vec(
                "netguard_guarded",
                "Guarded NICs and links by kind and ledger state.",
                &["kind", "state"],
            )?,
            restores: counter_vec(
                "netguard_restores_total",
                "Repairs carried out, by case (nic, veth, vlan, macvlan) and outcome (restored, failed).",
                &["case", "outcome"],
            )?,
            restore_latency,
            conflicts: counter_vec(
                "netguard_conflicts_total",
                "Guarded NICs and links newly found in conflict: a device netguard does not own holds their name.",
                &["case"],
            )?,
            tracer_events: counter_vec(
                "netguard_tracer_events_total",
                "Kernel events the tracer delivered, by backend and kind.",
                &["backend", "kind"],
            )?,
            tracer_dropped: counter_vec(
                "netguard_tracer_dropped_events_total",
                "Kernel events the tracer lost (ring buffer full, netlink overrun), by backend.",
                &["backend"],
            )?,
            pass_duration: histogram(
                "netguard_reconcile_pass_duration_seconds",
                "Duration of one restore pass (survey, plan, repairs).",
            )?,
            ledger_save_duration: histogram(
                "netguard_ledger_save_duration_seconds",
                "Duration of writing the ledger document (fsynced) when it changed.",
            )?,
            backend_info: gauge_vec(
                "netguard_tracer_backend_info",
                "The tracer backend in use (always 1).",
                &["backend"],
            )?,
            registry,
        };
        // Every case shows from the start at 0: `rate()` and `increase()` then see the first
        // repair, and a dashboard has its series before anything happened.
        for case in CASES {
            for outcome in ["restored", "failed"] {
                metrics.restores.with_label_values(&[case, outcome]);
            }
            metrics.restore_latency.with_label_values(&[case]);
            metrics.conflicts.with_label_values(&[case]);
        }
        Ok(metrics)
    }

    /// The current values in the text exposition format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Binds `addr` now (so a taken port stops the agent at start), then serves `/metrics` on
    /// it for as long as the returned future runs.
    pub async fn serve(
        self: std::sync::Arc<Self>,
        addr: SocketAddr,
    ) -> Result<impl std::future::Future<Output = ()>, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let metrics = self.clone();
                tokio::spawn(async move {
                    // A client that neither asks nor goes away within a while is dropped.
                    let answered =
                        tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics));
                    if let Ok(Err(e)) = answered.await {
                        tracing::debug!("metrics connection: {e}");
                    }
                });
            }
        })
    }
}

/// One HTTP/1.x request, one answer, then the connection closes: all a scraper needs.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || request.len() > 16 * 1024 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            prometheus::TEXT_FORMAT,
            metrics.encode().into_bytes(),
        ),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/html; charset=utf-8",
            b"<html><body><a href=\"/metrics\">netguard metrics</a></body></html>\n".to_vec(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            b"only GET\n".to_vec(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(&body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new().unwrap();
        m.restores.with_label_values(&["veth", "restored"]).inc();
        m.restore_latency
            .with_label_values(&["veth"])
            .observe(0.004);
        m.tracer_dropped.with_label_values(&["netlink"]).inc_by(0);
        let text = m.encode();
        assert!(text.contains("netguard_restores_total{case=\"veth\",outcome=\"restored\"} 1"));
        assert!(
            text.contains("netguard_restore_latency_seconds_bucket{case=\"veth\",le=\"0.005\"} 1")
        );
        assert!(text.contains("netguard_build_info{version=\""));
        assert!(text.contains("# TYPE netguard_tracer_dropped_events_total counter"));
    }

    #[tokio::test]
    async fn serves_metrics_over_http_and_refuses_other_paths() {
        let m = std::sync::Arc::new(Metrics::new().unwrap());
        // Port 0: the kernel picks one; find it through a listener of our own first.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        tokio::spawn(m.serve(addr).await.unwrap());
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"));
        assert!(ok.contains("netguard_build_info"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    }
}
