//! OCI hooks (oci-hooks(5)): the runtime runs `netguard oci-hook --stage STAGE` with the
//! container's state (the OCI runtime spec's `State`) on stdin. createRuntime and poststart
//! get the container's `pid` (its netns is `/proc/PID/ns/net`, already set up by the
//! runtime's CNI); poststop gets none (the netns is gone by then).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::runtime::State;

/// Where podman and CRI-O look for hook files by default (oci-hooks(5)), and where the
/// package puts netguard's.
pub const DEFAULT_HOOKS_DIR: &str = "/usr/share/containers/oci/hooks.d";

/// The OCI annotation that opts a container into netguard's hooks as `install oci-hooks`
/// writes them (`podman run --annotation io.netguard.guard=true`: an OCI annotation in the
/// container's config, which is what oci-hooks(5) `when.annotations` matches).
pub const GUARD_ANNOTATION: &str = "io.netguard.guard";

/// The hook stages netguard acts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// After the runtime made the container's namespaces, before its process runs.
    CreateRuntime,
    Poststart,
    /// After the container stopped; its netns is gone.
    Poststop,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::CreateRuntime, Stage::Poststart, Stage::Poststop];

    /// The stage's name in oci-hooks(5) and on netguard's command line.
    pub fn name(self) -> &'static str {
        match self {
            Stage::CreateRuntime => "createRuntime",
            Stage::Poststart => "poststart",
            Stage::Poststop => "poststop",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stage {
    type Err = HookError;

    fn from_str(s: &str) -> Result<Stage, HookError> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.name() == s)
            .ok_or_else(|| HookError::Stage(s.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("unknown hook stage '{0}' (netguard acts at createRuntime, poststart, poststop)")]
    Stage(String),
    #[error("the OCI state on stdin is not usable: {0}")]
    Decode(String),
    #[error("the OCI state on stdin names no container id")]
    NoId,
    #[error("the OCI state at {stage} has no pid, so the container's netns cannot be found")]
    NoPid { stage: Stage },
}

/// What a hook call says about a container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerEvent {
    pub stage: Stage,
    /// The runtime that runs it, from its annotations (`io.container.manager`: `libpod` for
    /// podman; CRI-O's `io.kubernetes.cri-o.*`), else `oci`.
    pub runtime: String,
    pub id: String,
    pub pid: Option<i32>,
    pub bundle: PathBuf,
}

impl ContainerEvent {
    /// Parses the state on stdin for `stage`; createRuntime and poststart need a pid.
    pub fn parse(stage: Stage, stdin: &[u8]) -> Result<ContainerEvent, HookError> {
        let state: State =
            serde_json::from_slice(stdin).map_err(|e| HookError::Decode(e.to_string()))?;
        if state.id().is_empty() {
            return Err(HookError::NoId);
        }
        let pid = state.pid().filter(|pid| *pid > 0);
        if pid.is_none() && stage != Stage::Poststop {
            return Err(HookError::NoPid { stage });
        }
        let annotations = state.annotations().clone().unwrap_or_default();
        let runtime = match annotations.get("io.container.manager") {
            Some(manager) if manager == "libpod" => "podman".to_string(),
            Some(manager) => manager.clone(),
            None if annotations
                .keys()
                .any(|k| k.starts_with("io.kubernetes.cri-o.")) =>
            {
                "cri-o".to_string()
            }
            None => "oci".to_string(),
        };
        Ok(ContainerEvent {
            stage,
            runtime,
            id: state.id().clone(),
            pid,
            bundle: state.bundle().clone(),
        })
    }

    /// The container's netns while its process lives.
    pub fn netns(&self) -> Option<PathBuf> {
        self.pid
            .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // As podman 4.3 with runc gives it at createRuntime.
    const PODMAN: &str = r#"{"ociVersion":"1.0.2-dev","id":"f2b837f649a1fe33dc2cab1ee590084fb8291ef2fc79f91fc01a9df57f9f0b9c","status":"created","pid":4242,"bundle":"/var/lib/containers/storage/overlay-containers/f2b8/userdata","annotations":{"io.container.manager":"libpod","io.podman.annotations.autoremove":"FALSE"}}"#;

    #[test]
    fn create_runtime_gives_the_container_and_its_netns() {
        let event = ContainerEvent::parse(Stage::CreateRuntime, PODMAN.as_bytes()).unwrap();
        assert_eq!(event.runtime, "podman");
        assert!(event.id.starts_with("f2b837f6"));
        assert_eq!(event.netns(), Some(PathBuf::from("/proc/4242/ns/net")));
    }

    #[test]
    fn poststop_needs_no_pid_but_the_others_do() {
        let stopped = r#"{"ociVersion":"1.0.2","id":"abc","status":"stopped","bundle":"/b"}"#;
        let event = ContainerEvent::parse(Stage::Poststop, stopped.as_bytes()).unwrap();
        assert_eq!((event.runtime.as_str(), event.netns()), ("oci", None));
        assert_eq!(
            ContainerEvent::parse(Stage::Poststart, stopped.as_bytes()),
            Err(HookError::NoPid {
                stage: Stage::Poststart
            })
        );
    }

    #[test]
    fn bad_state_and_stage_are_named() {
        let no_id = r#"{"ociVersion":"1.0.2","status":"created","pid":1,"bundle":"/b"}"#;
        assert_eq!(
            ContainerEvent::parse(Stage::CreateRuntime, no_id.as_bytes()),
            Err(HookError::NoId)
        );
        let err = ContainerEvent::parse(Stage::Poststop, b"[1,2]").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the OCI state on stdin is not usable"),
            "{err}"
        );
        let err = "prestart".parse::<Stage>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown hook stage 'prestart' (netguard acts at createRuntime, poststart, poststop)"
        );
        assert_eq!("createRuntime".parse::<Stage>(), Ok(Stage::CreateRuntime));
    }
}
