//! `cargo xtask package`: the Debian package, staged file by file and built with dpkg-deb
//! (what cargo-deb does, without a tool to install): the binary, the systemd unit, the
//! default config, man pages and completions generated from the clap definitions, the
//! monitoring files, and maintainer scripts that take netguard out of CNI and OCI hooks
//! before the binary goes. lintian must report no errors.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::shell;

#[derive(clap::Args)]
pub struct PackageArgs {
    /// Where the .deb goes (default: target/package).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Build from this netguard binary (and the netguard-shim beside it) instead of a fresh
    /// release build.
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
    /// Skip lintian.
    #[arg(long)]
    no_lintian: bool,
    /// The Maintainer field: "Name <address>".
    #[arg(long, default_value = MAINTAINER)]
    maintainer: String,
}

const NAME: &str = "netguard";
/// Who the package names as its maintainer (`--maintainer` for a real one).
const MAINTAINER: &str = "netguard developers <netguard@example.org>";

/// Completions: (clap_complete shell, path in the package).
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "usr/share/bash-completion/completions/netguard"),
    ("zsh", "usr/share/zsh/vendor-completions/_netguard"),
    ("fish", "usr/share/fish/vendor_completions.d/netguard.fish"),
];

/// Repository files shipped as they are: (source, path in the package, mode).
const SHIPPED: [(&str, &str, u32); 8] = [
    (
        "deploy/systemd/netguard.service",
        "lib/systemd/system/netguard.service",
        0o644,
    ),
    (
        "deploy/debian/netguard.toml",
        "etc/netguard/netguard.toml",
        0o644,
    ),
    (
        "deploy/prometheus/netguard-alerts.yml",
        "usr/share/netguard/prometheus/netguard-alerts.yml",
        0o644,
    ),
    (
        "deploy/grafana/netguard-dashboard.json",
        "usr/share/netguard/grafana/netguard-dashboard.json",
        0o644,
    ),
    (
        "deploy/kubernetes/netguard-daemonset.yaml",
        "usr/share/netguard/kubernetes/netguard-daemonset.yaml",
        0o644,
    ),
    // Where podman and CRI-O find hooks (oci-hooks(5)): every container annotated
    // io.netguard.guard=true is followed once the package is in.
    (
        "deploy/oci-hooks/netguard-createruntime.json",
        "usr/share/containers/oci/hooks.d/netguard-createruntime.json",
        0o644,
    ),
    (
        "deploy/oci-hooks/netguard-poststop.json",
        "usr/share/containers/oci/hooks.d/netguard-poststop.json",
        0o644,
    ),
    (
        "deploy/debian/lintian-overrides",
        "usr/share/lintian/overrides/netguard",
        0o644,
    ),
];

/// What runtimes run per container (the CNI plugin, the OCI hooks): the small client of the
/// agent, kept out of PATH; it hands a call to /usr/bin/netguard when no agent runs.
const SHIM: &str = "usr/lib/netguard/netguard-shim";

/// The CNI plugin: the shim linked as `netguard` into Debian's CNI bin dir (where
/// containernetworking-plugins puts its plugins), relative as lintian wants.
const CNI_PLUGIN_LINK: (&str, &str) = ("usr/lib/cni/netguard", "../netguard/netguard-shim");

pub fn run(args: &PackageArgs) -> anyhow::Result<PathBuf> {
    let root = shell::workspace_root();
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => {
            shell::build_release(&["netguard", "netguard-shim"])?;
            shell::target_dir().join("release/netguard")
        }
    };
    let shim = binary.with_file_name("netguard-shim");
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| shell::target_dir().join("package"));
    let version = version(&binary)?;
    let stage = out.join(format!("{NAME}_{version}_amd64"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    // The binaries, without their debug info (a package carries none; lintian says so).
    let bin = stage.join("usr/bin/netguard");
    for (from, to) in [(&binary, &bin), (&shim, &stage.join(SHIM))] {
        mkdir_for(to)?;
        shell::run(
            Command::new("strip")
                .args(["--strip-unneeded", "-o"])
                .arg(to)
                .arg(from),
        )?;
        set_mode(to, 0o755)?;
    }
    for (from, to, mode) in SHIPPED {
        let to = stage.join(to);
        mkdir_for(&to)?;
        fs::copy(root.join(from), &to).with_context(|| format!("cannot copy {from}"))?;
        set_mode(&to, mode)?;
    }
    let (link, target) = CNI_PLUGIN_LINK;
    mkdir_for(&stage.join(link))?;
    std::os::unix::fs::symlink(target, stage.join(link))
        .with_context(|| format!("cannot link {link}"))?;
    let man = stage.join("usr/share/man/man1");
    shell::run(Command::new(&bin).arg("manpages").arg(&man))?;
    for page in fs::read_dir(&man)? {
        let page = page?.path();
        set_mode(&page, 0o644)?;
        shell::run(Command::new("gzip").args(["-9n"]).arg(&page))?;
    }
    for (shell_name, to) in COMPLETIONS {
        let to = stage.join(to);
        mkdir_for(&to)?;
        let script = shell::output(Command::new(&bin).args(["completions", shell_name]))?;
        fs::write(&to, script)?;
        set_mode(&to, 0o644)?;
    }
    docs(&stage, &version, &args.maintainer)?;
    control(&stage, &bin, &version, &args.maintainer)?;
    let deb = out.join(format!("{NAME}_{version}_amd64.deb"));
    shell::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    println!("built {}", deb.display());
    if !args.no_lintian {
        lintian(&deb)?;
    }
    Ok(deb)
}

/// `netguard --version` says `netguard X.Y.Z`.
fn version(binary: &Path) -> anyhow::Result<String> {
    let out = shell::output(Command::new(binary).arg("--version"))?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("{} --version said {out:?}", binary.display()))
}

fn mkdir_for(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().context("a path in the package")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    mkdir_for(path)?;
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    set_mode(path, mode)
}

/// copyright (machine-readable) and the changelog of a native package.
fn docs(stage: &Path, version: &str, maintainer: &str) -> anyhow::Result<()> {
    let doc = stage.join("usr/share/doc/netguard");
    write(
        &doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: netguard\n\n\
             Files: *\n\
             Copyright: 2026 netguard developers\n\
             License: GPL-2.0-only\n \
             On Debian systems, the full text of the GNU General Public License version 2\n \
             can be found in the file '/usr/share/common-licenses/GPL-2'.\n",
        0o644,
    )?;
    let date = shell::output(Command::new("date").args(["-R"]))?;
    let changelog = doc.join("changelog");
    write(
        &changelog,
        &format!(
            "netguard ({version}) unstable; urgency=medium\n\n  \
             * Release {version}.\n\n -- {maintainer}  {}\n",
            date.trim()
        ),
        0o644,
    )?;
    shell::run(Command::new("gzip").args(["-9n"]).arg(&changelog))
}

/// DEBIAN/: control (dependencies from dpkg-shlibdeps), conffiles, md5sums, maintainer scripts.
fn control(stage: &Path, bin: &Path, version: &str, maintainer: &str) -> anyhow::Result<()> {
    let debian = stage.join("DEBIAN");
    let depends = shlib_depends(bin)?;
    let installed_kb = du_kb(stage)?;
    write(
        &debian.join("control"),
        &format!(
            "Package: {NAME}\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: {maintainer}\n\
             Installed-Size: {installed_kb}\n\
             Depends: {depends}\n\
             Recommends: iproute2\n\
             Section: net\n\
             Priority: optional\n\
             Description: keeps container network interfaces from vanishing or losing names\n \
             netguard traces every NIC netns transition (eBPF, or rtnetlink where the\n \
             kernel allows no probes), remembers each NIC's home name and each guarded\n \
             link's config, and restores what was lost: refunded devN NICs renamed\n \
             home, veth/vlan/macvlan links re-created, bridge ports re-attached.\n \
             .\n \
             The agent runs as a systemd service and exposes Prometheus metrics.\n"
        ),
        0o644,
    )?;
    write(
        &debian.join("conffiles"),
        "/etc/netguard/netguard.toml\n",
        0o644,
    )?;
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;
    write(&debian.join("postrm"), POSTRM, 0o755)?;
    let sums = shell::output(
        Command::new("sh")
            .arg("-c")
            .arg("find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | LC_ALL=C sort -z | xargs -0r md5sum")
            .current_dir(stage),
    )?;
    write(&debian.join("md5sums"), &sums, 0o644)
}

/// `Depends:` for the binary's shared libraries, as dpkg-shlibdeps computes it.
fn shlib_depends(bin: &Path) -> anyhow::Result<String> {
    let work = bin
        .ancestors()
        .nth(3)
        .context("the stage of usr/bin/netguard")?
        .parent()
        .context("the stage's parent")?
        .join("shlibdeps");
    write(
        &work.join("debian/control"),
        &format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n"),
        0o644,
    )?;
    let out = shell::output(
        Command::new("dpkg-shlibdeps")
            .args(["-O", "--warnings=0"])
            .arg(fs::canonicalize(bin)?)
            .current_dir(&work),
    )?;
    let _ = fs::remove_dir_all(&work);
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .with_context(|| format!("dpkg-shlibdeps said {out:?}"))
}

fn du_kb(dir: &Path) -> anyhow::Result<String> {
    let out = shell::output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(dir),
    )?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("du output")
}

/// Fails on any lintian error; warnings are printed.
fn lintian(deb: &Path) -> anyhow::Result<()> {
    let out = Command::new("lintian")
        .args(["--allow-root", "--no-tag-display-limit"])
        .arg(deb)
        .output()
        .context("cannot run lintian (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    anyhow::ensure!(
        errors.is_empty(),
        "lintian found {} error(s) in {}",
        errors.len(),
        deb.display()
    );
    println!("lintian: no errors");
    Ok(())
}

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]; then
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		deb-systemd-helper unmask 'netguard.service' >/dev/null || true
		if deb-systemd-helper --quiet was-enabled 'netguard.service'; then
			deb-systemd-helper enable 'netguard.service' >/dev/null || true
		else
			deb-systemd-helper update-state 'netguard.service' >/dev/null || true
		fi
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then
			deb-systemd-invoke try-restart 'netguard.service' >/dev/null || true
		fi
	fi
fi
exit 0
"#;

/// The binary is still there: take netguard out of every conflist and hook dir before it
/// goes. A failure stops the removal, since a conflist naming a plugin that is gone fails
/// every pod ADD.
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = "remove" ] || [ "$1" = "deconfigure" ]; then
	if [ -d /run/systemd/system ]; then
		deb-systemd-invoke stop 'netguard.service' >/dev/null || true
	fi
	netguard uninstall cni
	netguard uninstall oci-hooks
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "remove" ] && command -v deb-systemd-helper >/dev/null 2>&1; then
	deb-systemd-helper mask 'netguard.service' >/dev/null || true
fi
if [ "$1" = "purge" ]; then
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		deb-systemd-helper purge 'netguard.service' >/dev/null || true
		deb-systemd-helper unmask 'netguard.service' >/dev/null || true
	fi
	rm -rf /var/lib/netguard
fi
exit 0
"#;
