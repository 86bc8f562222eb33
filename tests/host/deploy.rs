//! What netguard ships to operators, checked with the tools they use: the Debian package
//! (lintian, installed into a throwaway root, `man -l`, `systemd-analyze verify` of the unit
//! as installed), the alert rules (`promtool test rules`), the DaemonSet (kubernetes-validate,
//! offline), the container image (built and run by podman on storage of the test's own), and
//! `netguard install|uninstall`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use netguard_tests::ops::{run, tool, workspace};
use netguard_tests::{netguard_bin, shim_bin, World};
use serde_json::{json, Value};

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let dir = workspace().join("deploy/prometheus");
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules", "netguard-alerts.yml"])
        .current_dir(&dir));
    assert!(ok && out.contains("SUCCESS: 6 rules found"), "{out}");
    let (ok, out) = run(Command::new("promtool")
        .args(["test", "rules", "netguard-alerts.test.yml"])
        .current_dir(&dir));
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

#[test]
fn daemonset_validates_offline_and_a_broken_one_does_not() {
    // Root: the validator runs in a netns of its own.
    let w = World::new("k8s");
    let manifest = workspace().join("deploy/kubernetes/netguard-daemonset.yaml");
    // In a netns of its own (no network): the schemas it uses are the ones it ships.
    let validate = |file: &Path| {
        run(Command::new("unshare")
            .arg("-n")
            .arg(tool("kubernetes-validate"))
            .arg("--strict")
            .arg(file))
    };
    let (ok, out) = validate(&manifest);
    assert!(
        ok && out.contains("passed for resource daemonset/netguard"),
        "{out}"
    );
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    for needed in [
        "hostNetwork: true",
        "hostPID: true",
        "prometheus.io/scrape: \"true\"",
        "path: /run/netns,",
        "path: /var/run/netns,",
        "path: /var/run/docker/netns,",
        "path: /var/lib/cni,",
        "path: /sys/fs/bpf,",
        "path: /sys/kernel/btf,",
        "path: /var/lib/netguard,",
        "path: /opt/cni/bin,",
        "path: /etc/cni/net.d,",
        "\"install\", \"cni\"",
        "\"uninstall\", \"cni\"",
    ] {
        assert!(text.contains(needed), "the DaemonSet lacks {needed}");
    }
    assert_eq!(text.matches("mountPropagation: HostToContainer").count(), 4);
    let broken = w.dir.0.join("broken.yaml");
    std::fs::write(&broken, text.replace("hostPID: true", "hostPID: \"yes\"")).expect("write");
    let (ok, out) = validate(&broken);
    assert!(!ok && out.contains("hostPID"), "{out}");
}

/// `cargo xtask package` from the test binary into `out` (lintian included).
fn package(out: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let (ok, log) = run(Command::new(cargo)
        .args(["run", "--quiet", "-p", "xtask", "--", "package", "--binary"])
        .arg(netguard_bin())
        .arg("--out")
        .arg(out)
        .current_dir(workspace()));
    assert!(ok && log.contains("lintian: no errors"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("E:")), "{log}");
    std::fs::read_dir(out)
        .expect("package dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {}: {log}", out.display()))
}

#[test]
fn package_installs_into_a_throwaway_root_with_every_file_in_place() {
    let w = World::new("deb");
    let dir = &w.dir;
    let deb = package(&dir.0.join("out"));
    let root = dir.0.join("root");
    for sub in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(sub)).expect("dpkg dirs");
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").expect("dpkg status");
    // Unpacked by dpkg itself (owners, modes, conffiles), with no maintainer script run on
    // this host.
    let (ok, out) = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--log=/dev/null", "--unpack"])
        .arg(&deb));
    assert!(ok, "dpkg --unpack: {out}");

    let expect = [
        ("usr/bin/netguard", 0o755),
        ("usr/lib/netguard/netguard-shim", 0o755),
        ("lib/systemd/system/netguard.service", 0o644),
        // A conffile waits under .dpkg-new until dpkg configures the package.
        ("etc/netguard/netguard.toml.dpkg-new", 0o644),
        ("usr/share/man/man1/netguard.1.gz", 0o644),
        ("usr/share/man/man1/netguard-agent.1.gz", 0o644),
        ("usr/share/man/man1/netguard-install.1.gz", 0o644),
        ("usr/share/bash-completion/completions/netguard", 0o644),
        ("usr/share/zsh/vendor-completions/_netguard", 0o644),
        ("usr/share/fish/vendor_completions.d/netguard.fish", 0o644),
        ("usr/share/doc/netguard/copyright", 0o644),
        ("usr/share/doc/netguard/changelog.gz", 0o644),
        ("usr/share/netguard/prometheus/netguard-alerts.yml", 0o644),
        ("usr/share/netguard/grafana/netguard-dashboard.json", 0o644),
        (
            "usr/share/netguard/kubernetes/netguard-daemonset.yaml",
            0o644,
        ),
        (
            "usr/share/containers/oci/hooks.d/netguard-createruntime.json",
            0o644,
        ),
        (
            "usr/share/containers/oci/hooks.d/netguard-poststop.json",
            0o644,
        ),
        ("usr/share/lintian/overrides/netguard", 0o644),
    ];
    for (path, mode) in expect {
        let meta = std::fs::metadata(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path}");
    }
    // The hooks run the packaged shim, at the stage each is named for.
    let hook: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("usr/share/containers/oci/hooks.d/netguard-createruntime.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        hook["hook"]["path"], "/usr/lib/netguard/netguard-shim",
        "{hook}"
    );
    assert_eq!(
        hook["stages"],
        serde_json::json!(["createRuntime"]),
        "{hook}"
    );
    // The CNI plugin: the shim linked into Debian's CNI bin dir, resolving inside the root.
    let plugin = root.join("usr/lib/cni/netguard");
    assert_eq!(
        std::fs::read_link(&plugin).unwrap(),
        Path::new("../netguard/netguard-shim")
    );
    assert_eq!(
        std::fs::canonicalize(&plugin).unwrap(),
        std::fs::canonicalize(root.join("usr/lib/netguard/netguard-shim")).unwrap()
    );
    // The packaged binary installs the packaged shim as the plugin (and copies it, as the
    // DaemonSet does: a copy is recognized as netguard's when it goes).
    let conflist = dir.0.join("10-pkg.conflist");
    std::fs::write(
        &conflist,
        r#"{"cniVersion": "1.0.0", "name": "pkg", "plugins": [{"type": "bridge"}]}"#,
    )
    .unwrap();
    let packaged = |args: &[&str]| {
        run(Command::new(root.join("usr/bin/netguard"))
            .args(args)
            .arg("--conflist")
            .arg(&conflist)
            .arg("--bin-dir")
            .arg(dir.0.join("pkg-bin")))
    };
    let (ok, out) = packaged(&["install", "cni"]);
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read_link(dir.0.join("pkg-bin/netguard")).unwrap(),
        std::fs::canonicalize(root.join("usr/lib/netguard/netguard-shim")).unwrap()
    );
    let (ok, out) = packaged(&["install", "cni", "--copy"]);
    assert!(ok, "{out}");
    let copied = std::fs::read(dir.0.join("pkg-bin/netguard")).unwrap();
    assert_eq!(
        copied,
        std::fs::read(root.join("usr/lib/netguard/netguard-shim")).unwrap()
    );
    let (ok, out) = packaged(&["uninstall", "cni"]);
    assert!(ok, "{out}");
    assert!(!dir.0.join("pkg-bin/netguard").exists(), "{out}");
    let (ok, depends) = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Depends"));
    assert!(ok && depends.contains("libc6"), "Depends: {depends}");
    let (ok, conffiles) = run(Command::new("dpkg-query")
        .arg(format!("--root={}", root.display()))
        .args(["-W", "-f=${Conffiles}", "netguard"]));
    assert!(
        ok && conffiles.contains("/etc/netguard/netguard.toml"),
        "{conffiles}"
    );

    let (ok, version) = run(Command::new(root.join("usr/bin/netguard")).arg("--version"));
    assert!(ok && version.starts_with("netguard "), "{version}");
    let man = |page: &str| {
        run(Command::new("man")
            .arg("-l")
            .arg(root.join("usr/share/man/man1").join(page))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"))
    };
    let (ok, page) = man("netguard.1.gz");
    assert!(
        ok && page.contains("--log-format") && page.contains("netguard-agent(1)"),
        "{page}"
    );
    let (ok, page) = man("netguard-agent.1.gz");
    assert!(ok && page.contains("--metrics <ADDR>"), "{page}");
    let (ok, bash) = run(Command::new("bash")
        .arg("-n")
        .arg(root.join("usr/share/bash-completion/completions/netguard")));
    assert!(ok, "bash completion: {bash}");

    // The unit as installed, on a system that has systemd's own units.
    let (ok, out) = run(Command::new("cp")
        .arg("-a")
        .arg("/lib/systemd/system/.")
        .arg(root.join("lib/systemd/system")));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(root.join("lib/systemd/system/netguard.service"))
        .env("MANPATH", root.join("usr/share/man")));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
}

#[test]
fn install_cni_and_oci_hooks_and_uninstall_leave_nothing_naming_a_gone_plugin() {
    let w = World::new("inst");
    let dir = &w.dir;
    let conf = dir.0.join("net.d");
    let bin = dir.0.join("bin");
    let hooks = dir.0.join("hooks.d");
    std::fs::create_dir_all(&conf).expect("conf dir");
    let conflist = conf.join("87-podman.conflist");
    let original = r#"{"cniVersion": "0.4.0", "name": "podman", "plugins": [{"type": "bridge", "bridge": "cni-podman0"}, {"type": "portmap"}]}"#;
    std::fs::write(&conflist, original).expect("conflist");
    let ng = |args: &[&str]| run(Command::new(netguard_bin()).args(args));
    let (ok, out) = ng(&[
        "install",
        "cni",
        "--conflist",
        conflist.to_str().unwrap(),
        "--bin-dir",
        bin.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    let types: Vec<&str> = doc["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "portmap", "netguard"]);
    assert_eq!(doc["plugins"][0]["bridge"], "cni-podman0");
    let backup = std::fs::read_to_string(conf.join("87-podman.conflist.netguard-backup")).unwrap();
    assert_eq!(backup, original);
    // The plugin is the small shim beside the binary, not the binary itself.
    let linked = std::fs::read_link(bin.join("netguard")).expect("plugin link");
    assert_eq!(linked, std::fs::canonicalize(shim_bin()).unwrap());
    assert!(
        out.contains(&format!("runtimes run {}", linked.display())),
        "{out}"
    );
    let (ok, version) = run(Command::new(bin.join("netguard")).arg("--version"));
    assert!(
        ok && version.starts_with("netguard-shim") && version.contains(netguard::install::MARKER),
        "{version}"
    );

    let (ok, out) = ng(&["install", "oci-hooks", "--dir", hooks.to_str().unwrap()]);
    assert!(ok, "{out}");
    let hook_of = |stage: &str| -> Value {
        let file = hooks.join(format!("netguard-{}.json", stage.to_lowercase()));
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap()
    };
    for stage in netguard::install::HOOK_STAGES {
        let hook = hook_of(stage);
        assert_eq!(hook["version"], "1.0.0");
        assert_eq!(hook["hook"]["path"], linked.to_str().unwrap());
        assert_eq!(hook["hook"]["args"][3], stage);
        assert_eq!(
            hook["when"],
            json!({"annotations": {"^io\\.netguard\\.guard$": "^true$"}}),
            "only for containers annotated io.netguard.guard=true"
        );
    }
    assert!(out.contains("--annotation io.netguard.guard=true"), "{out}");
    let (ok, out) = ng(&[
        "install",
        "oci-hooks",
        "--dir",
        hooks.to_str().unwrap(),
        "--every-container",
    ]);
    assert!(ok && out.contains("every container"), "{out}");
    for stage in netguard::install::HOOK_STAGES {
        assert_eq!(hook_of(stage)["when"], json!({"always": true}));
    }

    let (ok, out) = ng(&[
        "uninstall",
        "cni",
        "--conf-dir",
        conf.to_str().unwrap(),
        "--bin-dir",
        bin.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    assert!(!doc.to_string().contains("netguard"), "{doc}");
    assert!(!bin.join("netguard").exists() && !bin.join("netguard").is_symlink());
    let (ok, out) = ng(&["uninstall", "oci-hooks", "--dir", hooks.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read_dir(&hooks).unwrap().count(), 0);

    // Bad input: one line naming the file, exit 2.
    let bad = conf.join("bad.conflist");
    std::fs::write(&bad, r#"{"name": "x", "type": "bridge"}"#).unwrap();
    let out = Command::new(netguard_bin())
        .args(["install", "cni", "--conflist"])
        .arg(&bad)
        .arg("--bin-dir")
        .arg(&bin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "netguard: {} is not a CNI conflist: it has no \"plugins\" list",
            bad.display()
        )
    );
}

/// podman on storage, config and a netns of the test's own (never the host's).
struct Podman {
    dir: PathBuf,
    netns: PathBuf,
}

impl Podman {
    fn new(dir: &Path, netns: PathBuf) -> Podman {
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
             [network]\nnetwork_backend = \"cni\"\n",
        )
        .expect("containers.conf");
        Podman {
            dir: dir.to_path_buf(),
            netns,
        }
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        run(Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("podman")
            .args([
                "--root",
                &d("root"),
                "--runroot",
                &d("run"),
                "--tmpdir",
                &d("tmp"),
            ])
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf")))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f"]);
        let _ = self.run(&["rmi", "-a", "-f"]);
        // Whatever podman left mounted under its dirs goes before the dirs do.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

#[test]
fn container_image_builds_from_an_imported_base_and_prints_the_version() {
    let w = World::new("img").with(&["pod"]);
    let dir = &w.dir;
    // The base: busybox and the libraries the binary links, as `podman import` takes it.
    let base = dir.0.join("base");
    let bin = netguard_bin();
    let (ok, ldd) = run(Command::new("ldd").arg(&bin));
    assert!(ok, "{ldd}");
    let mut files: Vec<PathBuf> = ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    files.push("/bin/busybox".into());
    for file in files {
        let to = base.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(&file).unwrap(), &to)
            .unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
    }
    std::os::unix::fs::symlink("busybox", base.join("bin/sh")).unwrap();
    let tar = dir.0.join("base.tar");
    let (ok, out) = run(Command::new("tar")
        .arg("-C")
        .arg(&base)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    assert!(ok, "{out}");
    let podman = Podman::new(&dir.0, w.ns("pod").path());
    let (ok, out) = podman.run(&[
        "import",
        tar.to_str().unwrap(),
        "localhost/netguard-base:test",
    ]);
    assert!(ok, "podman import: {out}");

    let context = dir.0.join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy(&bin, context.join("netguard")).unwrap();
    std::fs::copy(shim_bin(), context.join("netguard-shim")).unwrap();
    let containerfile = workspace().join("deploy/container/Containerfile");
    let (ok, out) = podman.run(&[
        "build",
        "--pull=never",
        "--build-arg",
        "BASE=localhost/netguard-base:test",
        "-f",
        containerfile.to_str().unwrap(),
        "-t",
        "localhost/netguard:test",
        context.to_str().unwrap(),
    ]);
    assert!(ok, "podman build: {out}");
    let (ok, out) = podman.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/netguard:test",
        "--version",
    ]);
    assert!(ok, "podman run: {out}");
    let want =
        String::from_utf8_lossy(&Command::new(&bin).arg("--version").output().unwrap().stdout)
            .into_owned();
    assert_eq!(out.trim(), want.trim());
}
