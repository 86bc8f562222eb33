//! Scenario (d) of the runtimes issue: a real NIC lent by container ID follows the container.
//! The suite stands in for the runtime: it starts a process in a netns of its own (the
//! container), calls `netguard oci-hook` with the OCI state on stdin at createRuntime and
//! poststop as runc would, and checks the NIC as `ip` shows it. No `lend` after the first.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netguard::trace::BackendKind;
use netguard_tests::{is_up, IP};
use serde_json::{json, Value};

use crate::agent::{bystanders, link, nic_home, until, Agent, Outcome};
use crate::scenarios::ip;

const ETH2_MAC: &str = "52:54:00:12:34:58";
/// A runtime kills a hook at its timeout (podman: none by default; CRI-O: configurable); the
/// hook's own patience is 5 s.
const HOOK_LIMIT: Duration = Duration::from_secs(5);
const ID: &str = "d0c4e2f1a7b3d0c4e2f1a7b3d0c4e2f1a7b3d0c4e2f1a7b3d0c4e2f1a7b3d0c4";
const BUNDLE: &str = "/tmp/oci-bundle-d0c4";

/// A process in a netns of its own: what a runtime's container is to the kernel.
struct Container(Child);

impl Container {
    fn start() -> Result<Container, String> {
        let mut cmd = Command::new("/bin/sleep");
        cmd.arg("600");
        // SAFETY: only unshare(2) between fork and exec.
        unsafe {
            cmd.pre_exec(|| match libc::unshare(libc::CLONE_NEWNET) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the container's process: {e}"))?;
        Ok(Container(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn netns_inode(&self) -> Result<u64, String> {
        let path = format!("/proc/{}/ns/net", self.pid());
        netguard::netns::inode_of(std::path::Path::new(&path)).map_err(|e| e.to_string())
    }

    /// `ip -j addr show dev NAME` inside the container's netns.
    fn link(&self, name: &str) -> Result<Option<Value>, String> {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.pid()))
            .map_err(|e| e.to_string())?;
        let fd = ns.as_raw_fd();
        let mut cmd = Command::new(IP);
        cmd.args(["-j", "addr", "show", "dev", name])
            .stderr(Stdio::null());
        // SAFETY: only setns(2) between fork and exec, on a descriptor open in the parent.
        unsafe {
            cmd.pre_exec(move || match libc::setns(fd, libc::CLONE_NEWNET) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        let out = cmd.output().map_err(|e| e.to_string())?;
        let parsed: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        Ok(parsed.as_array().and_then(|a| a.first().cloned()))
    }

    /// The process exits; its netns dies with it, and the kernel refunds what was lent.
    fn exit(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `netguard oci-hook --stage STAGE` with the OCI state a runtime gives (no pid at poststop).
fn hook(agent: &Agent, stage: &str, pid: Option<u32>) -> Result<Duration, String> {
    let mut state = json!({
        "ociVersion": "1.0.2", "id": ID, "bundle": BUNDLE,
        "status": if pid.is_some() { "created" } else { "stopped" },
        "annotations": { "io.container.manager": "libpod" },
    });
    if let Some(pid) = pid {
        state["pid"] = json!(pid);
    }
    let started = Instant::now();
    let mut child = Command::new("/bin/netguard")
        .args(["oci-hook", "--stage", stage])
        .args(["--socket", &agent.socket, "--state-dir", &agent.state_dir])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run the hook: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(state.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("WARN") || took > HOOK_LIMIT {
        return Err(format!(
            "oci-hook {stage}: {} after {took:?}: {stderr}",
            out.status
        ));
    }
    Ok(took)
}

/// eth2 in the container as eth0: its MAC, up, in the container's netns (as `ip` inside
/// shows it, and as `status` says where it is).
fn check_inside(agent: &Agent, container: &Container, when: &str) -> Outcome {
    let eth0 = container
        .link("eth0")?
        .ok_or_else(|| format!("{when}: no eth0 in the container's netns"))?;
    if eth0["address"] != ETH2_MAC || !is_up(&eth0) {
        return Err(format!("{when}: eth0 in the container is {eth0}"));
    }
    if link(None, "eth2").is_some() {
        return Err(format!("{when}: eth2 is still in init_net"));
    }
    let inode = container.netns_inode()?;
    let row = agent.row("eth2")?;
    let now = row["now"].as_str().unwrap_or_default();
    if row["state"] != "lent" || !now.starts_with(&format!("eth0 in {inode}")) {
        return Err(format!(
            "{when}: status says {row}, the container's netns is {inode}"
        ));
    }
    Ok(())
}

/// After the container's process exited and poststop ran: eth2 home under its home name,
/// with its MAC, up as it was at home, in init_net.
async fn check_home(agent: &Agent, when: &str) -> Outcome {
    until(&format!("{when}: eth2 home under its name"), || {
        nic_home("eth2", ETH2_MAC)
    })
    .await?;
    let eth2 = link(None, "eth2").ok_or(format!("{when}: no eth2 in init_net"))?;
    if !is_up(&eth2) {
        return Err(format!("{when}: eth2 came home down: {eth2}"));
    }
    let row = agent.row("eth2")?;
    if !matches!(row["state"].as_str(), Some("home" | "restored")) {
        return Err(format!("{when}: status says {row}"));
    }
    Ok(())
}

/// (d): eth2 lent by container ID (a 12-digit prefix) into its netns; the process exits ->
/// home as eth2; the container starts again in a new netns -> createRuntime lends it again
/// before anything else runs; twice; then the container is removed -> no longer follows it.
pub async fn relend_by_container(backend: BackendKind) -> Outcome {
    let others = bystanders(true)?;
    ip(&["link", "set", "eth2", "up"])?;
    std::fs::create_dir_all(BUNDLE).map_err(|e| e.to_string())?;
    let agent = Agent::start_in(backend, &format!("/tmp/oci-{backend}"), true)?;
    let fail = |why: String| format!("{why}\n  agent log:\n{}", agent.log_tail());
    let mut took = Vec::new();
    for start in 1..=3 {
        let container = Container::start()?;
        let create = hook(&agent, "createRuntime", Some(container.pid())).map_err(fail)?;
        if start == 1 {
            agent
                .netguard(&["lend", "eth2", "--container", &ID[..12], "--name", "eth0"])
                .map_err(fail)?;
        }
        let when = format!("start {start} (createRuntime took {create:?})");
        check_inside(&agent, &container, &when).map_err(fail)?;
        if start == 2 {
            // What an operator sees (README, Install).
            println!(
                "oci-relend {backend}: status:\n{}",
                agent.netguard(&["status"])?
            );
        }
        container.exit();
        let stop = hook(&agent, "poststop", None).map_err(fail)?;
        took.push((create, stop));
        check_home(&agent, &format!("stop {start}"))
            .await
            .map_err(fail)?;
    }
    // On the console for the record (hook times under TCG).
    println!("oci-relend {backend}: createRuntime, poststop hook times {took:?}");
    // Removed: poststop with its bundle gone; the next container of that ID gets nothing.
    std::fs::remove_dir_all(BUNDLE).map_err(|e| e.to_string())?;
    hook(&agent, "poststop", None).map_err(fail)?;
    match agent.netguard(&["lend", "eth2", "--container", &ID[..12]]) {
        Err(err) if err.contains("netguard install oci-hooks") => {}
        other => return Err(fail(format!("lend to a removed container: {other:?}"))),
    }
    others.check()?;
    agent.stop()
}
