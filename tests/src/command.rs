//! The `netguard` binary as a user runs it: one-shot commands and a running agent.

use std::fmt;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{TestNetns, World, IP};

/// The workspace's `netguard` binary, built first (a no-op when up to date) so that a test
/// never runs a stale one: `cargo test -p netguard-tests` alone does not build it. Built once
/// per test process: tests run in parallel and would queue on cargo's lock. `NETGUARD_BIN`
/// names another one (the benchmarks' release build).
pub fn netguard_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| std::env::var_os("NETGUARD_BIN").map_or_else(build_netguard, PathBuf::from))
        .clone()
}

/// `netguard-shim` (what runtimes run per container), built beside [`netguard_bin`].
pub fn shim_bin() -> PathBuf {
    netguard_bin().with_file_name("netguard-shim")
}

fn build_netguard() -> PathBuf {
    // Test executables live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>");
    let target_dir = profile_dir.parent().expect("<target>");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "netguard",
            "-p",
            "netguard-shim",
            "--bins",
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(workspace)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p netguard failed");
    profile_dir.join("netguard")
}

/// How long a test waits for netguard to do something (start, repair) before failing.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `done` every 50 ms until it holds and returns how long that took; panics after
/// [`AGENT_TIMEOUT`] with `what` and what `explain` shows then.
pub fn wait_until(
    what: &str,
    done: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) -> Duration {
    wait_until_every(Duration::from_millis(50), what, done, explain)
}

/// [`wait_until`], polling every `poll`.
pub fn wait_until_every(
    poll: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) -> Duration {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > AGENT_TIMEOUT {
            panic!("{what}: not within {AGENT_TIMEOUT:?}\n{}", explain());
        }
        std::thread::sleep(poll);
    }
    started.elapsed()
}

/// What one `netguard` command did.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// The `netguard` command as a test runs it: ledger, socket and agent log in the world's
/// directory, the world's host standing in for init_net.
pub struct Netguard {
    bin: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub host_netns: PathBuf,
}

impl Netguard {
    pub fn new(world: &World) -> Netguard {
        Netguard {
            bin: netguard_bin(),
            state_dir: world.dir.0.clone(),
            socket: world.dir.0.join("agent.sock"),
            host_netns: world.host.path(),
        }
    }

    /// The same command on the ledger in `state_dir`.
    pub fn with_state_dir(&self, state_dir: PathBuf) -> Netguard {
        Netguard {
            bin: self.bin.clone(),
            state_dir,
            socket: self.socket.clone(),
            host_netns: self.host_netns.clone(),
        }
    }

    /// `netguard ARGS --state-dir .. --socket .. --host-netns ..`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--host-netns")
            .arg(&self.host_netns)
            // The agent logs at its default level whatever the test runner's environment says.
            .env_remove("RUST_LOG");
        command
    }

    pub fn run(&self, args: &[&str]) -> Ran {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run netguard");
        Ran {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs ARGS and panics unless it exits 0.
    pub fn run_ok(&self, args: &[&str]) -> Ran {
        let ran = self.run(args);
        assert!(ran.status.success(), "netguard {}: {ran}", args.join(" "));
        ran
    }

    /// `netguard status --json`, parsed.
    pub fn status_json(&self) -> Value {
        let ran = self.run_ok(&["status", "--json"]);
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {ran}"))
    }

    /// The status row of the link `name` in `netns`, if listed.
    pub fn status_row(&self, netns: &TestNetns, name: &str) -> Option<Value> {
        let netns = netns.path().display().to_string();
        let status = self.status_json();
        status["rows"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == name && r["netns"] == netns.as_str())
            .cloned()
    }

    /// Where an agent started by [`Netguard::start_agent`] logs (every start appends).
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `netguard agent --backend netlink --interval 1` and waits until it answers
    /// `status` itself.
    pub fn start_agent(&self) -> AgentProcess {
        self.start_agent_with(&[])
    }

    /// [`Netguard::start_agent`] with more agent flags; `--interval 1` unless they give one.
    pub fn start_agent_with(&self, extra: &[&str]) -> AgentProcess {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the agent log");
        let interval: &[&str] = if extra.contains(&"--interval") {
            &[]
        } else {
            &["--interval", "1"]
        };
        let child = self
            .command(&[&["agent", "--backend", "netlink"], interval, extra].concat())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("agent log"))
            .stderr(log)
            .spawn()
            .expect("spawn netguard agent");
        let mut agent = AgentProcess { child };
        let pid = agent.child.id();
        wait_until(
            "the agent answers status",
            || {
                if let Ok(Some(exit)) = agent.child.try_wait() {
                    panic!(
                        "netguard agent exited ({exit}) while starting; log:\n{}",
                        self.log()
                    );
                }
                // Only a live socket: `status` without an agent takes the ledger's lock,
                // which the starting agent needs.
                UnixStream::connect(&self.socket).is_ok()
                    && self.status_json()["agent"]["pid"] == pid
            },
            || format!("log:\n{}", self.log()),
        );
        agent
    }

    /// `netguard status`, the agent's log and `ip` of the given netns, for failure messages.
    pub fn explain(&self, netns: &[&TestNetns]) -> String {
        let mut text = format!("netguard status: {}\n", self.run(&["status"]));
        for ns in netns {
            for what in [&["-d", "link"][..], &["addr"], &["route"]] {
                let out = Command::new(IP)
                    .args(["-n", &ns.name])
                    .args(what)
                    .output()
                    .expect("run ip");
                text += &format!(
                    "--- ip -n {} {}:\n{}",
                    ns.name,
                    what.join(" "),
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        text + &format!("--- agent log:\n{}", self.log())
    }
}

/// A running `netguard agent`, stopped on drop: SIGTERM, then SIGKILL if it has not exited
/// within 5 s.
pub struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and how it exited.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    /// SIGTERM, without waiting.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child, which is not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    /// How it exited, if it did within `patience`.
    pub fn exited_within(&mut self, patience: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                return Some(exit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: it gets no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(exit)) = self.child.try_wait() {
            return exit;
        }
        self.sigterm();
        if let Some(exit) = self.exited_within(Duration::from_secs(5)) {
            return exit;
        }
        let _ = self.child.kill();
        self.child.wait().expect("wait for the killed agent")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}
