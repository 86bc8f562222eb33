//! A private podman world for host tests: podman (runc, the CNI backend, Debian's plugins)
//! runs inside a test netns with its own storage, run root, tmp dir, hooks dir and CNI
//! config dir, so nothing touches the host's init_net or its container storage. Everything is
//! removed on drop, even when the test panics.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use netguard::install::{self, HookScope};

use crate::{TestNetns, World};

/// Where Debian's `containernetworking-plugins` puts the plugins.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";
/// libcni's result cache: global, whatever podman's `--root` says.
pub const CNI_RESULTS_DIR: &str = "/var/lib/cni/results";
/// The image every world imports from a tarball of busybox (no pulls here).
pub const IMAGE: &str = "localhost/ngt-busybox:latest";
/// Applets the image links to busybox.
const APPLETS: &[&str] = &[
    "sh", "ip", "ls", "cat", "sleep", "ping", "ifconfig", "route",
];

/// podman's world inside the test world's host stand-in: a bridge network created by a
/// conflist lives there, and so do the containers' host-side veths. Containers' own netns are
/// `/run/netns/netns-<uuid>` (or only `/proc/PID/ns/net` with `--network none`).
pub struct PodmanWorld {
    /// Its host runs podman (and an agent's `--host-netns`); podman's directories are under
    /// `dir/podman`, beside a ledger's. Dropped after the containers are removed (below).
    pub world: World,
    networks: Vec<String>,
}

impl PodmanWorld {
    /// A world whose `cni_plugin_dirs` holds links to every plugin in `/usr/lib/cni` plus
    /// `netguard` (the workspace's shim, as packaged), and the busybox image.
    pub fn new(tag: &str) -> PodmanWorld {
        let world = PodmanWorld {
            world: World::new(tag),
            networks: Vec::new(),
        };
        for sub in [
            "root",
            "runroot",
            "tmp",
            "hooks",
            "net",
            "cni",
            "ipam",
            "image/bin",
        ] {
            std::fs::create_dir_all(world.path(sub)).expect("create podman dirs");
        }
        world.link_plugins();
        world.write_containers_conf();
        world.import_image();
        world
    }

    /// The netns podman runs in.
    pub fn host(&self) -> &TestNetns {
        &self.world.host
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.world.dir.0.join("podman").join(sub)
    }

    /// The folder of OCI hook definitions podman reads (`--hooks-dir`).
    pub fn hooks_dir(&self) -> PathBuf {
        self.path("hooks")
    }

    fn link_plugins(&self) {
        let plugins = std::fs::read_dir(SYSTEM_CNI_DIR).unwrap_or_else(|e| {
            panic!("{SYSTEM_CNI_DIR}: {e} (install containernetworking-plugins: cargo xtask setup)")
        });
        for plugin in plugins {
            let plugin = plugin.expect("read the CNI plugin dir").path();
            let name = plugin.file_name().expect("plugin name");
            std::os::unix::fs::symlink(&plugin, self.path("cni").join(name)).expect("link plugin");
        }
        std::os::unix::fs::symlink(crate::shim_bin(), self.path("cni/netguard"))
            .expect("link netguard's shim as a CNI plugin");
    }

    fn write_containers_conf(&self) {
        // runc (crun fails on this host's hybrid cgroups), cgroupfs and file events (PID 1 is
        // not systemd), ulimits under this machine's hard limit.
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{events}"
runtime = "runc"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{cni}"]
network_config_dir = "{net}"
"#,
            events = self.path("events.log").display(),
            cni = self.path("cni").display(),
            net = self.path("net").display(),
        );
        std::fs::write(self.path("containers.conf"), conf).expect("write containers.conf");
    }

    fn import_image(&self) {
        let image = self.path("image");
        std::fs::copy("/bin/busybox", image.join("bin/busybox"))
            .expect("copy /bin/busybox (install busybox-static: cargo xtask setup)");
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", image.join("bin").join(applet))
                .expect("link applet");
        }
        let tarball = self.path("image.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&image)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .output()
            .expect("run tar");
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.podman_ok(&["import", &tarball.display().to_string(), IMAGE]);
    }

    /// `nsenter --net=<netns> podman --root .. ARGS` (never `ip netns exec`: it remounts /sys
    /// and runc then finds no cgroup mount).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.host().path().display()))
            .arg("podman")
            .arg("--root")
            .arg(self.path("root"))
            .arg("--runroot")
            .arg(self.path("runroot"))
            .arg("--tmpdir")
            .arg(self.path("tmp"))
            .arg("--hooks-dir")
            .arg(self.hooks_dir())
            .arg("--network-config-dir")
            .arg(self.path("net"))
            .args(args)
            .env("CONTAINERS_CONF", self.path("containers.conf"));
        command
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run podman")
    }

    /// Runs podman and returns its trimmed stdout; panics with its stderr on failure.
    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A network name unique to this world (libcni's cache in /var/lib/cni is shared by every
    /// test running at once).
    pub fn network_name(&self, tag: &str) -> String {
        format!("{}-{tag}", self.host().name)
    }

    /// Writes the conflist `<name>.conflist` with these plugins (cniVersion 1.0.0).
    pub fn add_network(&mut self, name: &str, plugins: Vec<Value>) {
        let conflist = json!({ "cniVersion": "1.0.0", "name": name, "plugins": plugins });
        let file = self.path("net").join(format!("{name}.conflist"));
        std::fs::write(file, serde_json::to_vec_pretty(&conflist).unwrap())
            .expect("write the conflist");
        self.networks.push(name.to_string());
    }

    /// The `bridge` plugin on `bridge` (gateway .1) with `host-local` addresses from
    /// `subnet`, kept in this world's own IPAM dir.
    pub fn bridge_plugin(&self, bridge: &str, subnet: &str) -> Value {
        json!({
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.path("ipam").display().to_string(),
            }
        })
    }

    /// The chain `podman network create` writes for a bridge network (containers/common's
    /// CNI backend: `bridge` with `host-local`, then `portmap`, `firewall` and `tuning`), on
    /// `bridge` with addresses from `subnet`; host-local's data kept in this world's IPAM dir.
    /// Their iptables rules and sysctls are the world's: podman runs inside its netns.
    pub fn podman_bridge_chain(&self, bridge: &str, subnet: &str) -> Vec<Value> {
        let mut bridge = self.bridge_plugin(bridge, subnet);
        bridge["ipMasq"] = json!(true);
        bridge["hairpinMode"] = json!(true);
        vec![
            bridge,
            json!({ "type": "portmap", "capabilities": { "portMappings": true } }),
            json!({ "type": "firewall", "backend": "" }),
            json!({ "type": "tuning" }),
        ]
    }

    /// netguard's entry in a conflist, chained after the plugin that makes the link.
    pub fn netguard_plugin(socket: &Path, state_dir: &Path) -> Value {
        json!({
            "type": "netguard",
            "socket": socket.display().to_string(),
            "stateDir": state_dir.display().to_string(),
        })
    }

    /// Hook definitions (oci-hooks(5)) that run `netguard oci-hook --stage S` against this
    /// agent at the stages netguard installs hooks for, as `install oci-hooks` scopes them:
    /// for containers annotated `io.netguard.guard=true` ([`PodmanWorld::run_guarded`]).
    pub fn install_netguard_hooks(&self, socket: &Path, state_dir: &Path) {
        let (socket, state_dir) = (socket.to_string_lossy(), state_dir.to_string_lossy());
        let args = ["--socket", &socket, "--state-dir", &state_dir];
        for stage in install::HOOK_STAGES {
            let hook = install::oci_hook(&crate::shim_bin(), stage, &args, HookScope::Annotated);
            let file = self.hooks_dir().join(format!("netguard-{stage}.json"));
            std::fs::write(file, serde_json::to_vec_pretty(&hook).unwrap()).expect("write hook");
        }
    }

    /// `podman run -d --name NAME --network NETWORK IMAGE CMD...`; the container ID.
    pub fn run(&self, name: &str, network: &str, cmd: &[&str]) -> String {
        self.run_with(name, network, &[], cmd)
    }

    /// [`PodmanWorld::run`] with the annotation that has netguard's hooks run for it.
    pub fn run_guarded(&self, name: &str, network: &str, cmd: &[&str]) -> String {
        let annotation = format!("{}=true", install::GUARD_ANNOTATION);
        self.run_with(name, network, &["--annotation", &annotation], cmd)
    }

    fn run_with(&self, name: &str, network: &str, options: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        args.extend_from_slice(options);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        self.podman_ok(&args)
    }

    /// The path of the container's current netns (a new one at every start).
    pub fn sandbox(&self, name: &str) -> PathBuf {
        PathBuf::from(self.podman_ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            name,
        ]))
    }

    pub fn id(&self, name: &str) -> String {
        self.podman_ok(&["inspect", "--format", "{{.Id}}", name])
    }

    /// `podman exec NAME CMD...`, its stdout.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.podman_ok(&args)
    }
}

impl Drop for PodmanWorld {
    fn drop(&mut self) {
        // Containers first: their netns, veths and CNI cache entries go with a clean DEL.
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        unmount_under(&self.path(""));
        // A failed DEL leaves libcni's cache file behind.
        if let Ok(entries) = std::fs::read_dir(CNI_RESULTS_DIR) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if self
                    .networks
                    .iter()
                    .any(|n| name.starts_with(&format!("{n}-")))
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Detaches every mount at or under `dir` (podman's overlay and shm mounts under --root and
/// --runroot), deepest first, so the directory can be removed.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_point(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        let Ok(c) = std::ffi::CString::new(point.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: umount2 with a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_point(raw: &str) -> String {
    raw.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
