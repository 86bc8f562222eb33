//! Installing netguard into container runtimes and taking it out again: the CNI plugin (an
//! entry at the end of a conflist's plugin chain plus the binary in the CNI bin dir) and the
//! OCI hooks (oci-hooks(5) JSON files).
//!
//! Order matters for CNI: every pod ADD runs each plugin a conflist names, so the binary goes
//! in before a conflist names it and comes out only after no conflist names it any more.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub use crate::runtime::oci_hook::{DEFAULT_HOOKS_DIR, GUARD_ANNOTATION};

/// The plugin type CNI runs as `<bin dir>/netguard`.
const PLUGIN: &str = "netguard";

/// The hook stages netguard follows a container through, as oci-hooks(5) spells them.
pub const HOOK_STAGES: [&str; 2] = ["createRuntime", "poststop"];
/// Stages earlier versions installed a hook for: poststart did nothing but cost every start a
/// process (docs/benchmarks.md section 7), so its file is removed at install and uninstall.
const RETIRED_STAGES: [&str; 1] = ["poststart"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a CNI conflist: {problem}")]
    NotConflist { path: PathBuf, problem: String },
    #[error("{path} exists and is not a link netguard made; move it away first")]
    Occupied { path: PathBuf },
    #[error("no conflist in {dir}: name one with --conflist")]
    NoConflist { dir: PathBuf },
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// How the binary gets into the CNI bin dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A symlink to the installed binary (a package on the host).
    Link,
    /// A copy (a container installing into the host's bin dir, where its own path means nothing).
    Copy,
}

/// Puts `binary` into `bin_dir` as `netguard`, then appends `{"type": "netguard"}` to each
/// conflist's plugins (a conflist naming it already is left as it is). Each conflist changed
/// is first copied to `FILE.netguard-backup`. Returns what it changed, one line each.
pub fn install_cni(
    conflists: &[PathBuf],
    bin_dir: &Path,
    binary: &Path,
    placement: Placement,
) -> Result<Vec<String>, InstallError> {
    let mut done = Vec::new();
    std::fs::create_dir_all(bin_dir).map_err(io("create", bin_dir))?;
    let target = bin_dir.join(PLUGIN);
    remove_plugin(&target)?;
    match placement {
        Placement::Link => std::os::unix::fs::symlink(binary, &target),
        Placement::Copy => copy_executable(binary, &target),
    }
    .map_err(io("place the plugin at", &target))?;
    done.push(format!("{} -> {}", target.display(), binary.display()));
    for conflist in conflists {
        let mut doc = Conflist::read(conflist)?;
        if doc.plugins.iter().any(is_ours) {
            continue;
        }
        doc.plugins.push(json!({ "type": PLUGIN }));
        let backup = backup_of(conflist);
        std::fs::write(&backup, &doc.text).map_err(io("write", &backup))?;
        doc.write(conflist)?;
        done.push(format!(
            "{}: netguard added (backup {})",
            conflist.display(),
            backup.display()
        ));
    }
    Ok(done)
}

/// Takes netguard out of each conflist (all those in `conf_dir` naming it when none are
/// given), drops their backups, then removes the plugin from `bin_dir`.
pub fn uninstall_cni(
    conflists: &[PathBuf],
    conf_dir: &Path,
    bin_dir: &Path,
) -> Result<Vec<String>, InstallError> {
    let mut done = Vec::new();
    let scanned = conflists.is_empty();
    let conflists = if scanned {
        conflists_in(conf_dir)?
    } else {
        conflists.to_vec()
    };
    for conflist in &conflists {
        let mut doc = match Conflist::read(conflist) {
            // A file CNI cannot read names no plugin: left alone, not a reason to stop (a
            // package removal would fail on another tool's broken file).
            Err(e @ InstallError::NotConflist { .. }) if scanned => {
                done.push(format!("{e}; left alone"));
                continue;
            }
            read => read?,
        };

        let before = doc.plugins.len();
        doc.plugins.retain(|p| !is_ours(p));
        if doc.plugins.len() != before {
            doc.write(conflist)?;
            done.push(format!("{}: netguard removed", conflist.display()));
        }
        let backup = backup_of(conflist);
        if backup.exists() {
            std::fs::remove_file(&backup).map_err(io("remove", &backup))?;
        }
    }
    let target = bin_dir.join(PLUGIN);
    if remove_plugin(&target)? {
        done.push(format!("{} removed", target.display()));
    }
    Ok(done)
}

/// Removes our plugin (a link, or a copy of netguard) at `target`; anything else there is
/// somebody else's and stops us. Returns whether there was one.
fn remove_plugin(target: &Path) -> Result<bool, InstallError> {
    let Ok(meta) = std::fs::symlink_metadata(target) else {
        return Ok(false);
    };
    if !(meta.file_type().is_symlink() || meta.is_file() && is_netguard(target)) {
        return Err(InstallError::Occupied {
            path: target.into(),
        });
    }
    std::fs::remove_file(target).map_err(io("remove", target))?;
    Ok(true)
}

/// Every `*.conflist` in `dir`, in name order (a missing dir has none).
pub fn conflists_in(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io("read", dir)(e)),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    found.sort();
    Ok(found)
}

/// The runtime kills a hook past this (oci-hooks(5) `timeout`); netguard's own patience is
/// shorter, so a container start never waits longer than this on netguard.
const HOOK_TIMEOUT_SECS: u32 = 10;

/// Which containers the runtime runs netguard's hooks for. Every hook the runtime runs costs
/// that container's start a process and runc's work around it (2-3 ms here; docs/benchmarks.md
/// section 7), and most containers have nothing for them: CNI attachments are guarded by the
/// chained plugin alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookScope {
    /// Containers annotated [`GUARD_ANNOTATION`]`=true`: only they can be bound with
    /// `learn --container` and `lend --container`.
    Annotated,
    /// Every container.
    Every,
}

impl HookScope {
    /// oci-hooks(5) `when`.
    fn when(self) -> Value {
        match self {
            HookScope::Annotated => {
                let key = format!("^{}$", GUARD_ANNOTATION.replace('.', "\\."));
                let mut annotations = serde_json::Map::new();
                annotations.insert(key, json!("^true$"));
                json!({ "annotations": annotations })
            }
            HookScope::Every => json!({ "always": true }),
        }
    }
}

/// The oci-hooks(5) document that runs `binary oci-hook --stage STAGE ARGS...` for `scope`.
pub fn oci_hook(binary: &Path, stage: &str, args: &[&str], scope: HookScope) -> Value {
    let mut argv = vec!["netguard", "oci-hook", "--stage", stage];
    argv.extend_from_slice(args);
    json!({
        "version": "1.0.0",
        "hook": {
            "path": binary,
            "args": argv,
            "timeout": HOOK_TIMEOUT_SECS,
        },
        "when": scope.when(),
        "stages": [stage],
    })
}

/// Writes one oci-hooks(5) file per stage into `dir`, each running `binary oci-hook --stage S`
/// for the containers of `scope`.
pub fn install_oci_hooks(
    dir: &Path,
    binary: &Path,
    scope: HookScope,
) -> Result<Vec<String>, InstallError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut done = Vec::new();
    for stage in HOOK_STAGES {
        let path = hook_file(dir, stage);
        let hook = oci_hook(binary, stage, &[], scope);
        let text = serde_json::to_string_pretty(&hook).unwrap_or_default() + "\n";
        write_atomic(&path, text.as_bytes(), 0o644)?;
        done.push(format!("{} written", path.display()));
    }
    done.push(match scope {
        HookScope::Annotated => format!(
            "the hooks run for containers started with the annotation {GUARD_ANNOTATION}=true \
             (podman run --annotation {GUARD_ANNOTATION}=true); --every-container for all"
        ),
        HookScope::Every => "the hooks run for every container".to_string(),
    });
    done.extend(remove_hooks(dir, &RETIRED_STAGES)?);
    Ok(done)
}

pub fn uninstall_oci_hooks(dir: &Path) -> Result<Vec<String>, InstallError> {
    remove_hooks(dir, &[HOOK_STAGES.as_slice(), &RETIRED_STAGES].concat())
}

/// Removes the hook files of `stages` that are there.
fn remove_hooks(dir: &Path, stages: &[&str]) -> Result<Vec<String>, InstallError> {
    let mut done = Vec::new();
    for stage in stages {
        let path = hook_file(dir, stage);
        match std::fs::remove_file(&path) {
            Ok(()) => done.push(format!("{} removed", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &path)(e)),
        }
    }
    Ok(done)
}

fn hook_file(dir: &Path, stage: &str) -> PathBuf {
    dir.join(format!("netguard-{}.json", stage.to_lowercase()))
}

fn backup_of(conflist: &Path) -> PathBuf {
    let mut name = conflist.as_os_str().to_owned();
    name.push(".netguard-backup");
    name.into()
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN)
}

/// Every netguard binary carries these bytes (this constant; `netguard-shim --version` says
/// them): a regular file in the bin dir holding them is a copy [`Placement::Copy`] made, from
/// this version or another.
pub const MARKER: &str = "netguard CNI plugin binary";

/// Where `netguard-shim`, the small binary runtimes are pointed at, lies relative to the
/// directory of `netguard`: beside it (a build) or in the package's library dir.
pub const SHIM_BESIDE: [&str; 2] = ["netguard-shim", "../lib/netguard/netguard-shim"];

fn is_netguard(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| {
        bytes.starts_with(b"\x7fELF") && bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())
    })
}

/// A conflist with its plugin chain taken out to work on.
struct Conflist {
    doc: Value,
    plugins: Vec<Value>,
    /// The file as it was read (what a backup keeps).
    text: String,
}

impl Conflist {
    fn read(path: &Path) -> Result<Conflist, InstallError> {
        let not_conflist = |problem: String| InstallError::NotConflist {
            path: path.into(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(io("read", path))?;
        let mut doc: Value =
            serde_json::from_str(&text).map_err(|e| not_conflist(e.to_string()))?;
        let plugins = match doc.get_mut("plugins").map(Value::take) {
            Some(Value::Array(plugins)) => plugins,
            _ => return Err(not_conflist("it has no \"plugins\" list".into())),
        };
        Ok(Conflist { doc, plugins, text })
    }

    /// Written back in place, with the file's mode.
    fn write(mut self, path: &Path) -> Result<(), InstallError> {
        use std::os::unix::fs::PermissionsExt;
        self.doc["plugins"] = Value::Array(self.plugins);
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        let text = serde_json::to_string_pretty(&self.doc).unwrap_or_default() + "\n";
        write_atomic(path, text.as_bytes(), mode)
    }
}

/// Readers (a runtime starting a pod) see the old file or the new one, never half of one.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".netguard-tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("write", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("replace", path))
}

fn copy_executable(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".netguard-tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::copy(from, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap"}]}"#;

    fn dirs() -> (PathBuf, PathBuf, PathBuf) {
        let root = std::env::temp_dir().join(format!(
            "netguard-install-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        let (conf, bin) = (root.join("net.d"), root.join("bin"));
        std::fs::create_dir_all(&conf).unwrap();
        (root, conf, bin)
    }

    fn types(path: &Path) -> Vec<String> {
        Conflist::read(path)
            .unwrap()
            .plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn cni_install_appends_once_links_and_uninstall_undoes_both() {
        let (root, conf, bin) = dirs();
        let conflist = conf.join("10-podnet.conflist");
        std::fs::write(&conflist, BRIDGE).unwrap();
        let binary = Path::new("/usr/bin/netguard");
        // Twice: the second changes nothing in the conflist.
        for _ in 0..2 {
            install_cni(
                std::slice::from_ref(&conflist),
                &bin,
                binary,
                Placement::Link,
            )
            .unwrap();
        }
        assert_eq!(types(&conflist), ["bridge", "portmap", "netguard"]);
        assert_eq!(std::fs::read_link(bin.join("netguard")).unwrap(), binary);
        assert_eq!(
            std::fs::read_to_string(backup_of(&conflist)).unwrap(),
            BRIDGE
        );
        // No conflist named: every one in the dir that names netguard; another tool's
        // broken file there is left alone.
        std::fs::write(conf.join("99-broken.conflist"), "{").unwrap();
        let done = uninstall_cni(&[], &conf, &bin).unwrap();
        assert!(done
            .iter()
            .any(|l| l.contains("99-broken.conflist is not a CNI conflist")));
        assert_eq!(types(&conflist), ["bridge", "portmap"]);
        assert!(!bin.join("netguard").exists());
        assert!(!backup_of(&conflist).exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_foreign_plugin_file_and_a_bad_conflist_are_named() {
        let (root, conf, bin) = dirs();
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("netguard"), "#!/bin/sh\n").unwrap();
        let conflist = conf.join("bad.conflist");
        std::fs::write(&conflist, r#"{"name":"x"}"#).unwrap();
        let err =
            install_cni(&[], &bin, Path::new("/usr/bin/netguard"), Placement::Link).unwrap_err();
        assert!(matches!(err, InstallError::Occupied { .. }), "{err}");
        std::fs::remove_file(bin.join("netguard")).unwrap();
        let err = install_cni(
            std::slice::from_ref(&conflist),
            &bin,
            Path::new("/usr/bin/netguard"),
            Placement::Link,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a CNI conflist: it has no \"plugins\" list",
                conflist.display()
            )
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn oci_hooks_are_one_file_per_stage_and_go_again() {
        let (root, _, _) = dirs();
        let hooks = root.join("hooks.d");
        // An earlier version's poststart hook goes at the next install.
        std::fs::create_dir_all(&hooks).unwrap();
        std::fs::write(hooks.join("netguard-poststart.json"), "{}").unwrap();
        let shim = Path::new("/usr/lib/netguard/netguard-shim");
        install_oci_hooks(&hooks, shim, HookScope::Every).unwrap();
        let read = |file: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(hooks.join(file)).unwrap()).unwrap()
        };
        assert_eq!(
            read("netguard-poststop.json")["when"],
            json!({"always": true})
        );
        install_oci_hooks(&hooks, shim, HookScope::Annotated).unwrap();
        assert!(!hooks.join("netguard-poststart.json").exists());
        let doc = read("netguard-createruntime.json");
        assert_eq!(doc["version"], "1.0.0");
        assert_eq!(
            doc["when"],
            json!({"annotations": {"^io\\.netguard\\.guard$": "^true$"}})
        );
        assert_eq!(doc["stages"], json!(["createRuntime"]));
        assert_eq!(
            doc["hook"]["args"],
            json!(["netguard", "oci-hook", "--stage", "createRuntime"])
        );
        assert_eq!(doc["hook"]["timeout"], 10);
        // The package ships what `install oci-hooks` writes for its shim.
        for (stage, shipped) in [
            (
                "createruntime",
                include_str!("../../deploy/oci-hooks/netguard-createruntime.json"),
            ),
            (
                "poststop",
                include_str!("../../deploy/oci-hooks/netguard-poststop.json"),
            ),
        ] {
            let written = std::fs::read_to_string(hooks.join(format!("netguard-{stage}.json")));
            assert_eq!(
                written.unwrap(),
                shipped,
                "deploy/oci-hooks/netguard-{stage}.json"
            );
        }
        assert_eq!(uninstall_oci_hooks(&hooks).unwrap().len(), 2);
        assert_eq!(std::fs::read_dir(&hooks).unwrap().count(), 0);
        std::fs::remove_dir_all(root).unwrap();
    }
}
