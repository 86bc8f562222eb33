//! The real `netguard agent` on a world: started on the world's ledger (its own socket, never
//! the system's), used once its first pass found everything whole, stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use netguard::api::{self, Request};
use netguard::status::Status;
use tokio::process::{Child, Command};

use crate::world::World;

/// How long an agent may take to start and find its world whole.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Agent {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Starts `netguard agent` on `world` (with the `extra` flags) and waits until it answers
    /// and every guarded link is whole.
    pub async fn start(netguard: &Path, world: &World, extra: &[&str]) -> anyhow::Result<Agent> {
        let socket = world.state_dir.join("agent.sock");
        let log = world.state_dir.join("agent.log");
        let mut cmd = Command::new(netguard);
        cmd.arg("agent")
            .arg("--host-netns")
            .arg(&world.host_path)
            .arg("--state-dir")
            .arg(&world.state_dir);
        cmd.arg("--socket").arg(&socket).args(extra);
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        let mut agent = Agent { child, socket, log };
        let started = Instant::now();
        loop {
            if let Some(exit) = agent.child.try_wait()? {
                bail!("the agent exited ({exit}): {}", agent.log_tail());
            }
            if let Ok(status) = agent.status().await {
                let passed = status.agent.is_some_and(|a| a.passes > 0);
                if passed
                    && status
                        .rows
                        .iter()
                        .all(|r| matches!(r.row.state.as_str(), "intact" | "restored"))
                {
                    return Ok(agent);
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the agent did not find its world whole within {READY_TIMEOUT:?}: {}",
                    agent.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status(&self) -> anyhow::Result<Status> {
        Ok(api::request(&self.socket, &Request::Status).await?)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// SIGTERM, and a kill if it does not end in time.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: a signal to our own child, which has not been reaped (it has an id).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(exit) => match exit? {
                exit if exit.success() => Ok(()),
                exit => bail!("the agent ended badly ({exit}): {}", self.log_tail()),
            },
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "the agent did not stop within 10 s of SIGTERM: {}",
                    self.log_tail()
                )
            }
        }
    }

    /// Copies the agent's log to `to` (said on stderr), for a failure to be looked into later.
    pub fn keep_log(&self, to: &Path) {
        let kept = to
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::copy(&self.log, to));
        match kept {
            Ok(_) => eprintln!("the agent's log is kept in {}", to.display()),
            Err(e) => eprintln!("cannot keep the agent's log in {}: {e}", to.display()),
        }
    }

    /// The last lines the agent logged, for errors.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "last log lines:\n{}",
            lines[lines.len().saturating_sub(10)..].join("\n")
        )
    }
}

/// CPU time (user + system) a process has used, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Resident memory of a process, in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?;
    Ok(kb.trim().trim_end_matches("kB").trim().parse::<u64>()? * 1024)
}
