//! `netguard-shim`: what container runtimes run once per container, as the chained CNI plugin
//! `netguard` and as the OCI hooks. It only talks to the agent, so every container start pays
//! for a small process rather than for loading the whole `netguard` binary (about a
//! millisecond per call on a test host; docs/benchmarks.md section 7). When no agent answers,
//! the call is handed whole to `netguard`, which carries it out under the ledger's lock.
// The C `main` below stands in for std's: see there why.
#![no_main]

use std::ffi::{c_char, c_int, OsString};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use netguard::api::Meant;
use netguard::client::{self, NoAgent};
use netguard::config::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use netguard::control::{Operation, Reply};
use netguard::install::MARKER;
use netguard::runtime::oci_hook::Stage;

/// Where the package installs `netguard`, when it is not beside this binary.
const INSTALLED_NETGUARD: &str = "/usr/bin/netguard";

/// The exit code of a panic, as std's start-up makes it.
const PANICKED: c_int = 101;

/// The process's entry, in place of std's start-up: runtimes exec this binary up to three
/// times per container start, and std's start-up (the main thread's stack guard, found by
/// reading /proc/self/maps, and an alternate signal stack) costs about a tenth of each exec
/// here (docs/benchmarks.md section 7). What of it a socket client needs is kept: SIGPIPE is
/// ignored (an agent that hangs up is an error to report, not a death that fails the pod), and
/// a panic ends the process with std's exit code rather than aborting it.
#[no_mangle]
pub extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    // SAFETY: setting a signal's disposition to SIG_IGN, before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    std::panic::catch_unwind(run).unwrap_or(PANICKED)
}

fn run() -> c_int {
    if let Some(command) = std::env::var_os("CNI_COMMAND") {
        // VERSION, which podman asks of every plugin at every start, logs nothing.
        if command != "VERSION" {
            init_logging();
        }
        return client::cni_call(HandOver).print().into();
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some("oci-hook") => {
            init_logging();
            oci_hook(&args[1..]);
            0
        }
        Some("--version" | "-V") => {
            // The marker tells `netguard uninstall cni` a copy of this binary is netguard's.
            println!("netguard-shim {} ({MARKER})", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            eprintln!(
                "netguard-shim is run by container runtimes: as the CNI plugin `netguard` \
                 (with CNI_COMMAND set), or as `netguard-shim oci-hook --stage STAGE \
                 [--socket PATH] [--state-dir DIR]`; for anything else run `netguard`"
            );
            2
        }
    }
}

/// Runtimes show a plugin's and a hook's stderr: warnings only, no colour codes.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// `oci-hook --stage STAGE [--socket PATH] [--state-dir DIR]`, as `netguard oci-hook` takes
/// them. A hook never fails a container: a bad argument is logged and nothing is done.
fn oci_hook(args: &[OsString]) {
    let mut stage = None;
    let mut socket = PathBuf::from(DEFAULT_SOCKET);
    let mut state_dir = PathBuf::from(DEFAULT_STATE_DIR);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        match (flag.to_str(), args.next()) {
            (Some("--stage"), Some(value)) => match value.to_string_lossy().parse::<Stage>() {
                Ok(parsed) => stage = Some(parsed),
                Err(e) => return tracing::warn!("netguard-shim oci-hook: {e}; nothing done"),
            },
            (Some("--socket"), Some(value)) => socket = value.into(),
            (Some("--state-dir"), Some(value)) => state_dir = value.into(),
            _ => {
                return tracing::warn!(
                    "netguard-shim oci-hook: {} is not --stage, --socket or --state-dir with a \
                     value; check the hook's args; nothing done",
                    flag.to_string_lossy()
                )
            }
        }
    }
    match stage {
        Some(stage) => client::oci_hook_call(stage, socket, state_dir, HandOver),
        None => tracing::warn!("netguard-shim oci-hook: no --stage given; nothing done"),
    }
}

/// No agent answers: `netguard` gets the whole call (the same arguments, environment and
/// stdin) and carries it out under the ledger's lock; its outcome is this call's.
struct HandOver;

impl NoAgent for HandOver {
    fn operate(&self, _: &Meant, stdin: &[u8], _: &Operation) -> Result<Reply, String> {
        let netguard = full_netguard()?;
        let ran = |e: std::io::Error| format!("no agent answers, and {}: {e}", netguard.display());
        let mut child = Command::new(&netguard)
            .args(std::env::args_os().skip(1))
            .stdin(Stdio::piped())
            .spawn()
            .map_err(ran)?;
        if let Some(mut input) = child.stdin.take() {
            // A child that stops reading has its own say in its exit code.
            let _ = input.write_all(stdin);
        }
        let status = child.wait().map_err(ran)?;
        match status.code() {
            // Its stdout was the runtime's: what it printed stands, with its exit code.
            Some(code) => std::process::exit(code),
            None => Err(format!(
                "no agent answers, and {} ended by a signal ({status})",
                netguard.display()
            )),
        }
    }
}

/// `netguard` beside this binary (a build tree; a package keeps the shim elsewhere), else
/// where the package installs it; never this binary itself (copied in as `netguard`).
fn full_netguard() -> Result<PathBuf, String> {
    let me = std::env::current_exe().ok();
    let beside = me
        .as_deref()
        .and_then(Path::parent)
        .map(|dir| dir.join("netguard"));
    let identity = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let own = me.as_deref().and_then(identity);
    beside
        .into_iter()
        .chain([PathBuf::from(INSTALLED_NETGUARD)])
        .find(|candidate| identity(candidate).is_some_and(|id| Some(id) != own))
        .ok_or_else(|| {
            format!(
                "no agent answers, and no netguard binary is beside {} or at \
                 {INSTALLED_NETGUARD} to do without it",
                me.as_deref()
                    .unwrap_or(Path::new("netguard-shim"))
                    .display()
            )
        })
}
