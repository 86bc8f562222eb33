//! The chained CNI plugin's protocol (CNI spec 0.4.0, 1.0.0, 1.1.0): the environment and the
//! network config on stdin in, a result or a CNI error on stdout out.
//!
//! netguard never fails a pod because of itself: what goes wrong on netguard's side (no agent,
//! a busy or full ledger) is logged and ADD still prints the previous result and exits 0. Only
//! protocol errors (a bad config, an unsupported version, missing variables) and, for CHECK,
//! an attachment netguard sees broken are CNI errors.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::Workload;

/// The spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
/// The version STATUS and GC came with.
const STATUS_GC_VERSION: &str = "1.1.0";

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl FromStr for Command {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::Env(format!(
                    "CNI_COMMAND={other} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                )))
            }
        })
    }
}

/// A protocol error, answered with the spec's error JSON and a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CniError {
    #[error("cniVersion {given} is not supported (netguard speaks {})", SUPPORTED_VERSIONS.join(", "))]
    IncompatibleVersion { given: String },
    #[error("{command} needs cniVersion {STATUS_GC_VERSION} or later, not {given}")]
    CommandNeedsVersion { command: String, given: String },
    #[error("invalid environment: {0}")]
    Env(String),
    #[error("cannot decode the network config on stdin: {0}")]
    Decode(String),
    #[error("invalid network config: {0}")]
    Config(String),
    /// CHECK: netguard sees the attachment broken.
    #[error("{0}")]
    Broken(String),
}

impl CniError {
    /// The spec's well-known codes; 100+ are the plugin's own.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } | CniError::CommandNeedsVersion { .. } => 1,
            CniError::Env(_) => 4,
            CniError::Decode(_) => 6,
            CniError::Config(_) => 7,
            CniError::Broken(_) => 100,
        }
    }
}

/// The spec's error object.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorReply {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// What the runtime put in the environment (`CNI_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `K=V;K2=V2`.
    pub args: Vec<(String, String)>,
}

impl Invocation {
    /// Reads the `CNI_*` variables through `var` (the process environment, or a test's map).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let nonempty = |name: &str| var(name).filter(|v| !v.is_empty());
        let command = nonempty("CNI_COMMAND")
            .ok_or_else(|| CniError::Env("CNI_COMMAND is not set".into()))?
            .parse()?;
        let args = match nonempty("CNI_ARGS") {
            None => Vec::new(),
            Some(raw) => raw
                .split(';')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    pair.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| {
                            CniError::Env(format!("CNI_ARGS item '{pair}' is not KEY=VALUE"))
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Invocation {
            command,
            container_id: nonempty("CNI_CONTAINERID"),
            netns: nonempty("CNI_NETNS").map(PathBuf::from),
            ifname: nonempty("CNI_IFNAME"),
            args,
        })
    }

    /// `K8S_POD_UID` from `CNI_ARGS`: a new sandbox of the same pod is the same workload.
    pub fn pod_uid(&self) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == "K8S_POD_UID")
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str, value: &Option<String>) -> Result<String, CniError> {
        value
            .clone()
            .ok_or_else(|| CniError::Env(format!("{name} is required for {:?}", self.command)))
    }
}

/// netguard's entry in a conflist, with what the runtime adds.
#[derive(Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The agent's socket (default: the agent's default).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The ledger's directory when no agent runs (default: the agent's default).
    #[serde(default, rename = "stateDir")]
    pub state_dir: Option<PathBuf>,
    /// Kept as the bytes the runtime sent: ADD prints it unchanged.
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<Box<RawValue>>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<GcAttachment>>,
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The parts of a previous result netguard reads (it prints the whole of it unchanged).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct PrevResult {
    #[serde(default)]
    pub interfaces: Vec<ResultInterface>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResultInterface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub sandbox: Option<String>,
}

impl PrevResult {
    /// The interface `ifname` inside the container, as the previous plugin reported it.
    pub fn sandbox_interface(&self, ifname: &str) -> Option<&ResultInterface> {
        self.interfaces
            .iter()
            .find(|i| i.name == ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    }
}

/// One attachment: the network, the container and its interface name, where it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// `None` at a DEL whose netns is already gone.
    pub netns: Option<PathBuf>,
    pub pod_uid: Option<String>,
}

impl AttachmentRef {
    /// The workload its links belong to.
    pub fn workload(&self) -> Workload {
        Workload::CniAttachment {
            network: self.network.clone(),
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
            pod_uid: self.pod_uid.clone(),
        }
    }
}

impl fmt::Display for AttachmentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// netguard's side of each command. Errors are netguard's own trouble: logged, never a failed
/// pod.
pub trait Recorder {
    type Error: fmt::Display;
    /// Guard the attachment as the kernel has it now; what it guarded, for the log.
    fn add(&self, att: &AttachmentRef, prev: &PrevResult) -> Result<String, Self::Error>;
    /// Release it (idempotent; the netns may be gone).
    fn del(&self, att: &AttachmentRef) -> Result<(), Self::Error>;
    /// `Ok(Some(why))` when netguard sees the attachment broken.
    fn check(&self, att: &AttachmentRef, prev: &PrevResult) -> Result<Option<String>, Self::Error>;
    /// Release this network's attachments that are not in `valid`; how many went.
    fn gc(&self, network: &str, valid: &[GcAttachment]) -> Result<usize, Self::Error>;
}

/// What to print on stdout and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub code: u8,
}

impl Outcome {
    /// Prints the outcome on stdout; its exit code.
    pub fn print(&self) -> u8 {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // Nothing more can be said if stdout is closed.
        let _ = out.write_all(&self.stdout).and_then(|_| out.flush());
        self.code
    }
}

/// Parses stdin as the network config of this invocation (not for VERSION).
pub fn parse_config(stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf =
        serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::IncompatibleVersion {
            given: conf.cni_version,
        });
    }
    if conf.name.is_empty() {
        return Err(CniError::Config("the network has no name".into()));
    }
    Ok(conf)
}

/// Runs one invocation: protocol errors become the spec's error JSON (exit 1), netguard's own
/// trouble is logged.
pub fn handle<R: Recorder>(inv: &Invocation, stdin: &[u8], recorder: &R) -> Outcome {
    if inv.command == Command::Version {
        return version(stdin);
    }
    match run(inv, stdin, recorder) {
        Ok(stdout) => Outcome { stdout, code: 0 },
        Err(err) => {
            tracing::warn!("netguard CNI {:?}: {err}", inv.command);
            error_outcome(stdin, &err)
        }
    }
}

/// The spec's error JSON for `err` (in the runtime's version where netguard speaks it), exit 1.
pub fn error_outcome(stdin: &[u8], err: &CniError) -> Outcome {
    let reply = ErrorReply {
        cni_version: asked_version(stdin),
        code: err.code(),
        msg: err.to_string(),
        details: None,
    };
    Outcome {
        stdout: serde_json::to_vec(&reply).expect("error replies serialize"),
        code: 1,
    }
}

fn latest() -> &'static str {
    SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1]
}

/// The `cniVersion` on stdin when netguard speaks it, else the latest: replies (errors,
/// VERSION) are given in the runtime's version where possible.
fn asked_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(String::from))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| latest().to_string())
}

fn version(stdin: &[u8]) -> Outcome {
    let reply = serde_json::json!({
        "cniVersion": asked_version(stdin),
        "supportedVersions": SUPPORTED_VERSIONS,
    });
    Outcome {
        stdout: serde_json::to_vec(&reply).expect("JSON"),
        code: 0,
    }
}

fn run<R: Recorder>(inv: &Invocation, stdin: &[u8], recorder: &R) -> Result<Vec<u8>, CniError> {
    let conf = parse_config(stdin)?;
    if matches!(inv.command, Command::Status | Command::Gc)
        && conf.cni_version.as_str() != STATUS_GC_VERSION
    {
        return Err(CniError::CommandNeedsVersion {
            command: format!("{:?}", inv.command).to_uppercase(),
            given: conf.cni_version,
        });
    }
    let prev = match &conf.prev_result {
        Some(raw) => serde_json::from_str::<PrevResult>(raw.get())
            .map_err(|e| CniError::Config(format!("prevResult: {e}")))?,
        None => PrevResult::default(),
    };
    let attachment = || -> Result<AttachmentRef, CniError> {
        Ok(AttachmentRef {
            network: conf.name.clone(),
            container_id: inv.required("CNI_CONTAINERID", &inv.container_id)?,
            ifname: inv.required("CNI_IFNAME", &inv.ifname)?,
            netns: inv.netns.clone(),
            pod_uid: inv.pod_uid().map(String::from),
        })
    };
    match inv.command {
        Command::Add => {
            let raw = conf.prev_result.as_ref().ok_or_else(|| {
                CniError::Config(
                    "netguard is a chained plugin: list it after the plugin that creates the interface (no prevResult)".into(),
                )
            })?;
            let att = attachment()?;
            if att.netns.is_none() {
                return Err(CniError::Env("CNI_NETNS is required for ADD".into()));
            }
            match recorder.add(&att, &prev) {
                Ok(what) => tracing::info!("netguard CNI ADD {att}: {what}"),
                Err(e) => tracing::warn!("netguard CNI ADD {att}: not guarded: {e}"),
            }
            Ok(raw.get().as_bytes().to_vec())
        }
        Command::Del => {
            let att = attachment()?;
            if let Err(e) = recorder.del(&att) {
                tracing::warn!("netguard CNI DEL {att}: not released: {e}");
            }
            Ok(Vec::new())
        }
        Command::Check => {
            let att = attachment()?;
            if conf.prev_result.is_none() {
                return Err(CniError::Config(
                    "CHECK needs the prevResult of the ADD".into(),
                ));
            }
            match recorder.check(&att, &prev) {
                Ok(None) => Ok(Vec::new()),
                Ok(Some(why)) => Err(CniError::Broken(format!("{att}: {why}"))),
                Err(e) => {
                    tracing::warn!("netguard CNI CHECK {att}: cannot tell: {e}");
                    Ok(Vec::new())
                }
            }
        }
        // netguard fails open, so it is always ready to take ADDs. VERSION is answered in
        // `handle` before any config is read.
        Command::Status | Command::Version => Ok(Vec::new()),
        Command::Gc => {
            let valid = conf.valid_attachments.clone().unwrap_or_default();
            match recorder.gc(&conf.name, &valid) {
                Ok(n) => tracing::info!("netguard CNI GC {}: released {n}", conf.name),
                Err(e) => tracing::warn!("netguard CNI GC {}: {e}", conf.name),
            }
            Ok(Vec::new())
        }
    }
}

#[cfg(test)]
#[path = "cni_plugin_tests.rs"]
mod tests;
