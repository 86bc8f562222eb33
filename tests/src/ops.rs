//! Helpers for the operations tests: loopback HTTP, a Prometheus server of the test's own,
//! and the tools `cargo xtask setup` installs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace root (deploy/, target/).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A loopback address with a port nobody listens on now.
pub fn free_loopback() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    probe.local_addr().expect("local addr")
}

/// `GET path` over HTTP/1.0 (no chunking, the server closes): the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Percent-encodes a query parameter (PromQL has braces, quotes, spaces).
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Debian's Prometheus server on loopback, with its data in `dir`; killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// Scrapes `target` as job `netguard` every second and loads `rules`; waits until ready.
    pub fn start(dir: &Path, target: SocketAddr, rules: &Path) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  - job_name: netguard\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr = free_loopback();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("prometheus log"))
            .spawn()
            .expect("run prometheus (cargo xtask setup installs it)");
        let prometheus = Prometheus { child, addr, log };
        prometheus.wait_for("Prometheus ready", Duration::from_secs(30), || {
            http_get(addr, "/-/ready").is_ok_and(|(code, _)| code == 200)
        });
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/PATH`, parsed; panics unless `status` is `success`.
    pub fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(self.addr, &format!("/api/v1/{path}")).expect("Prometheus API");
        let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            code == 200 && doc["status"] == "success",
            "GET /api/v1/{path}: {code} {body}"
        );
        doc
    }

    /// An instant query: each result's labels and value.
    pub fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let doc = self.api(&format!("query?query={}", url_encode(promql)));
        doc["data"]["result"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        let value = r["value"][1].as_str().and_then(|v| v.parse().ok());
                        (r["metric"].clone(), value.unwrap_or(f64::NAN))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The single value of `promql` once it satisfies `ok`.
    pub fn wait_value(&self, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let mut last = None;
        self.wait_for(promql, Duration::from_secs(20), || {
            last = self.query(promql).first().map(|(_, v)| *v);
            last.is_some_and(&ok)
        });
        last.unwrap_or_default()
    }

    fn wait_for(&self, what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < patience,
                "{what}: not within {patience:?}; Prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tool `cargo xtask setup` installs: on PATH, or kubernetes-validate in its venv under the
/// target dir.
pub fn tool(name: &str) -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace().join(dir),
        _ => workspace().join("target"),
    };
    let venv = target.join("tools/venv/bin").join(name);
    if venv.exists() {
        return venv;
    }
    PathBuf::from(name)
}

/// Runs a command to its end: success, and stdout + stderr together.
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (cargo xtask setup installs it)"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}
