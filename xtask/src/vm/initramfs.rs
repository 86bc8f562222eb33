//! The guest's initramfs: busybox, iproute2, the netguard binaries (each with the libraries
//! `ldd` names), the kernel's modules, and an init that runs the suite and powers off.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::kernel::Kernel;
use crate::shell;

/// Marks the suite's lines on the serial console among the kernel's.
pub const MARK: &str = "NGVM";

/// The CNI plugins the suite chains netguard after (from `containernetworking-plugins`).
const CNI_PLUGINS: &[&str] = &["macvlan", "vlan", "static"];

/// Packs the guest for `kernel`, with the binaries of cargo profile `profile` (`debug` for
/// the suite, `release` for the benchmarks), into `dir/initramfs/RELEASE-PROFILE.cpio`.
pub fn build(
    kernel: &Kernel,
    suite_args: &[String],
    profile: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let name = format!("{}-{profile}", kernel.release);
    let root = dir.join("initramfs").join(&name);
    let _ = fs::remove_dir_all(&root);
    for sub in [
        "bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc", "root",
    ] {
        fs::create_dir_all(root.join(sub))?;
    }
    let binaries = shell::target_dir().join(profile);
    copy_executable(Path::new("/bin/busybox"), &root.join("bin/busybox"))?;
    copy_executable(&which("ip")?, &root.join("sbin/ip"))?;
    for binary in ["netguard", "vm-suite"] {
        let target = root.join("bin").join(binary);
        copy_executable(&binaries.join(binary), &target)?;
        // Debug info is most of a debug build's size, and the guest unpacks all of it.
        shell::run(Command::new("strip").arg("--strip-debug").arg(&target))?;
    }
    // Debian's CNI plugins are static: the suite runs them as a runtime would.
    fs::create_dir_all(root.join("usr/lib/cni"))?;
    for plugin in CNI_PLUGINS {
        copy_executable(
            &Path::new("/usr/lib/cni").join(plugin),
            &root.join("usr/lib/cni").join(plugin),
        )?;
    }
    copy_modules(kernel, &root)?;
    write_init(&root, suite_args)?;
    let image = dir.join("initramfs").join(format!("{name}.cpio"));
    let cpio = fs::File::create(&image)?;
    shell::run(
        Command::new("sh")
            .args(["-c", "find . -print0 | cpio --null --quiet -o -H newc"])
            .current_dir(&root)
            .stdout(cpio),
    )?;
    Ok(image)
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not found: run `cargo xtask setup`"))
}

/// Copies a binary and every shared library it loads, at the same paths.
fn copy_executable(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("cannot copy {} (was it built?)", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    let root = to
        .ancestors()
        .nth(2)
        .context("binary outside the initramfs")?;
    let ldd = Command::new("ldd").arg(from).output()?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            let target = root.join(path.trim_start_matches('/'));
            fs::create_dir_all(target.parent().expect("library path has a parent"))?;
            fs::copy(path, &target).with_context(|| format!("cannot copy library {path}"))?;
        }
    }
    Ok(())
}

fn copy_modules(kernel: &Kernel, root: &Path) -> anyhow::Result<()> {
    let modules = root.join("lib/modules").join(&kernel.release);
    for relative in kernel.needed_modules()? {
        let from = kernel.module_path(&relative);
        let to = modules.join(relative.trim_end_matches(".xz"));
        fs::create_dir_all(to.parent().expect("module path has a parent"))?;
        if relative.ends_with(".xz") {
            // busybox modprobe loads plain .ko only.
            let out = fs::File::create(&to)?;
            shell::run(Command::new("xz").arg("-dc").arg(&from).stdout(out))?;
        } else {
            fs::copy(&from, &to)?;
        }
    }
    for extra in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let from = kernel.module_path(extra);
        if from.is_file() {
            fs::copy(&from, modules.join(extra))?;
        }
    }
    shell::run(
        Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(&kernel.release),
    )
}

fn write_init(root: &Path, suite_args: &[String]) -> anyhow::Result<()> {
    let args = suite_args
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /run
mount -t tmpfs tmp /tmp
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
for m in e1000 8021q macvlan veth bridge; do modprobe $m || echo "{MARK} INFO modprobe $m failed"; done
ip link set lo up
echo "{MARK} START kernel $(uname -r)"
/bin/vm-suite {args}
echo "{MARK} END rc=$?"
poweroff -f
"#
    );
    let path = root.join("init");
    fs::write(&path, init)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}
