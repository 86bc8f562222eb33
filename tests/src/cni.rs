//! A small CNI runtime for tests, on the host and in the VM guest: runs a conflist's plugins
//! as libcni does (the `CNI_*` environment, each plugin's config on stdin with the list's
//! `name` and `cniVersion`, ADD in order passing `prevResult` along, DEL in reverse). It is
//! also the only way here to send CNI 1.1's STATUS and GC, or a `K8S_POD_UID`. Given a cache
//! directory, it keeps a result cache there as libcni does (a `cniCacheV1` file per attachment
//! written at ADD, removed at DEL).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::{json, Value};

use crate::World;

/// A `CNI_PATH` directory in `dir`: links to Debian's plugins `names`, and `netguard` (this
/// build's shim, as the package installs it) when named.
pub fn plugin_dir(dir: &Path, names: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("create the plugin directory");
    for name in names {
        let target = match *name {
            "netguard" => crate::shim_bin(),
            system => Path::new(crate::podman::SYSTEM_CNI_DIR).join(system),
        };
        std::os::unix::fs::symlink(target, bin.join(name)).expect("link a CNI plugin");
    }
    bin
}

/// Who the plugins are called for.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// `None`: a DEL after the netns is gone.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` (`K=V;K2=V2`).
    pub args: Option<String>,
}

/// What one plugin run gave.
#[derive(Debug, Clone)]
pub struct PluginRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl PluginRun {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout as JSON (`Null` when empty).
    pub fn json(&self) -> Value {
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("plugin stdout is not JSON ({e}): {}", self.stdout))
    }
}

pub struct CniRunner {
    /// `CNI_PATH`: where plugins are found, in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// The netns plugins run in (a runtime's host netns); `None`: ours.
    pub host_netns: Option<PathBuf>,
    /// Where to keep libcni's result cache; `None`: none kept.
    pub cache_dir: Option<PathBuf>,
}

impl CniRunner {
    pub fn new(plugin_dirs: Vec<PathBuf>) -> CniRunner {
        CniRunner {
            plugin_dirs,
            host_netns: None,
            cache_dir: None,
        }
    }

    /// Keeps libcni's result cache in `dir` (never the host's `/var/lib/cni`).
    pub fn with_cache(mut self, dir: PathBuf) -> CniRunner {
        self.cache_dir = Some(dir);
        self
    }

    /// The cache file of `att` on `conflist`'s network, named as libcni names it.
    pub fn cache_file(&self, conflist: &Value, att: &Attachment) -> Option<PathBuf> {
        let network = conflist["name"].as_str().expect("conflist has a name");
        let name = format!("{network}-{}-{}", att.container_id, att.ifname);
        self.cache_dir.as_ref().map(|dir| dir.join(name))
    }

    /// Writes the cache entry libcni writes after a successful ADD: the whole conflist as
    /// base64 `config`, `cniArgs` as pairs, and, as podman 4.3's libcni does, no `netns`
    /// (the result's interfaces say where the sandbox is).
    fn cache_add(&self, conflist: &Value, att: &Attachment, result: &Value) {
        let Some(path) = self.cache_file(conflist, att) else {
            return;
        };
        let args: Vec<Value> = att
            .args
            .iter()
            .flat_map(|a| a.split(';'))
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| serde_json::json!([k, v]))
            .collect();
        let entry = serde_json::json!({
            "kind": "cniCacheV1",
            "containerId": att.container_id,
            "config": base64::engine::general_purpose::STANDARD.encode(conflist.to_string()),
            "ifName": att.ifname,
            "networkName": conflist["name"],
            "cniArgs": args,
            "result": result,
        });
        std::fs::create_dir_all(path.parent().expect("a cache file has a directory"))
            .expect("create the cache directory");
        std::fs::write(&path, entry.to_string()).expect("write the cache file");
    }

    /// Plugins run inside `netns` (through `nsenter`): on the host, a test's stand-in.
    pub fn in_netns(mut self, netns: PathBuf) -> CniRunner {
        self.host_netns = Some(netns);
        self
    }

    fn find(&self, kind: &str) -> PathBuf {
        self.plugin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no CNI plugin '{kind}' in {:?}", self.plugin_dirs))
    }

    /// Runs one plugin with `config` on stdin.
    pub fn exec(&self, command: &str, att: Option<&Attachment>, config: &Value) -> PluginRun {
        let kind = config["type"].as_str().expect("plugin config has a type");
        self.exec_binary(
            &self.find(kind),
            command,
            att,
            config.to_string().as_bytes(),
        )
    }

    /// Runs `binary` as a CNI plugin with raw `stdin`.
    pub fn exec_binary(
        &self,
        binary: &Path,
        command: &str,
        att: Option<&Attachment>,
        stdin: &[u8],
    ) -> PluginRun {
        let path = std::env::join_paths(&self.plugin_dirs).expect("CNI_PATH");
        let mut cmd = Command::new(binary);
        // The plugin runs in the netns as a runtime's plugins do, inheriting it: entered
        // between fork and exec, not through an nsenter process the runtime would not run.
        let netns = self.host_netns.as_ref().map(|netns| {
            std::fs::File::open(netns)
                .unwrap_or_else(|e| panic!("open the netns {}: {e}", netns.display()))
        });
        if let Some(netns) = &netns {
            let fd = netns.as_raw_fd();
            // SAFETY: only setns, async-signal-safe, runs in the child; `netns` outlives spawn.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(att) = att {
            cmd.env("CNI_CONTAINERID", &att.container_id)
                .env("CNI_IFNAME", &att.ifname);
            if let Some(netns) = &att.netns {
                cmd.env("CNI_NETNS", netns);
            }
            if let Some(args) = &att.args {
                cmd.env("CNI_ARGS", args);
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write the plugin's stdin");
        let out = child.wait_with_output().expect("wait for the plugin");
        PluginRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The config of plugin `i` of `conflist` as the runtime passes it.
    pub fn plugin_config(conflist: &Value, i: usize, prev: Option<&Value>) -> Value {
        let mut config = conflist["plugins"][i].clone();
        config["name"] = conflist["name"].clone();
        config["cniVersion"] = conflist["cniVersion"].clone();
        if let Some(prev) = prev {
            config["prevResult"] = prev.clone();
        }
        config
    }

    fn plugins(conflist: &Value) -> usize {
        conflist["plugins"].as_array().map_or(0, Vec::len)
    }

    /// ADD through the list; the last result, or the run that failed.
    pub fn add(&self, conflist: &Value, att: &Attachment) -> Result<Value, PluginRun> {
        let mut prev: Option<Value> = None;
        for i in 0..Self::plugins(conflist) {
            let run = self.exec(
                "ADD",
                Some(att),
                &Self::plugin_config(conflist, i, prev.as_ref()),
            );
            if !run.ok() {
                return Err(run);
            }
            prev = Some(run.json());
        }
        let result = prev.unwrap_or(Value::Null);
        self.cache_add(conflist, att, &result);
        Ok(result)
    }

    /// DEL through the list in reverse, each with the ADD's result; stops at the first failure.
    pub fn del(
        &self,
        conflist: &Value,
        att: &Attachment,
        result: Option<&Value>,
    ) -> Result<(), PluginRun> {
        self.each_reverse("DEL", conflist, Some(att), result)?;
        // As libcni: the file goes at a successful DEL only.
        if let Some(path) = self.cache_file(conflist, att) {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// CHECK through the list, each with the ADD's result.
    pub fn check(
        &self,
        conflist: &Value,
        att: &Attachment,
        result: &Value,
    ) -> Result<(), PluginRun> {
        for i in 0..Self::plugins(conflist) {
            let run = self.exec(
                "CHECK",
                Some(att),
                &Self::plugin_config(conflist, i, Some(result)),
            );
            if !run.ok() {
                return Err(run);
            }
        }
        Ok(())
    }

    /// GC (CNI 1.1) with these (container ID, ifname) pairs still valid.
    pub fn gc(&self, conflist: &Value, valid: &[(&str, &str)]) -> Result<(), PluginRun> {
        let valid: Vec<Value> = valid
            .iter()
            .map(|(id, ifname)| serde_json::json!({ "containerID": id, "ifname": ifname }))
            .collect();
        let mut list = conflist.clone();
        for plugin in list["plugins"].as_array_mut().into_iter().flatten() {
            plugin["cni.dev/valid-attachments"] = Value::Array(valid.clone());
        }
        self.each_reverse("GC", &list, None, None)
    }

    fn each_reverse(
        &self,
        command: &str,
        conflist: &Value,
        att: Option<&Attachment>,
        result: Option<&Value>,
    ) -> Result<(), PluginRun> {
        for i in (0..Self::plugins(conflist)).rev() {
            let run = self.exec(command, att, &Self::plugin_config(conflist, i, result));
            if !run.ok() {
                return Err(run);
            }
        }
        Ok(())
    }
}

/// A conflist in `w`'s host stand-in: `bridge` on `bridge` with `host-local` addresses from
/// `subnet`, then the plugins `after` it.
pub fn bridge_network(w: &World, bridge: &str, subnet: &str, after: &[Value]) -> Value {
    let mut plugins = vec![json!({
        "type": "bridge", "bridge": bridge, "isGateway": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": subnet }]],
            "dataDir": w.dir.0.join("ipam").display().to_string(),
        }
    })];
    plugins.extend_from_slice(after);
    json!({
        // Debian's plugins speak up to 1.0.0.
        "cniVersion": "1.0.0",
        "name": format!("{}-net", w.host.name),
        "plugins": plugins,
    })
}
