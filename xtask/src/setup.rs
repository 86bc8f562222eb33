//! Installs the Debian packages that building and testing netguard need.

use std::process::Command;

use crate::shell;

/// clang builds the BPF object; g++ builds libFuzzer for the fuzz targets; qemu and friends
/// boot the VM test bed; the rest packages netguard and checks what it ships (unit, package,
/// metrics, rules, image).
const PACKAGES: &[&str] = &[
    "clang-19",
    "g++",
    "llvm-19",
    "libbpf-dev",
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "xz-utils",
    "iproute2",
    "iputils-ping",
    "dpkg-dev",
    "binutils",
    "lintian",
    "man-db",
    "systemd",
    "prometheus",
    "podman",
    "runc",
    "containernetworking-plugins",
    "python3-venv",
];

/// kubernetes-validate (PyPI) checks the Kubernetes manifests offline; it lives in a venv
/// under the target dir (`tools/venv`) unless it is on PATH already.
const KUBERNETES_VALIDATE_VENV: &str = "tools/venv";

pub fn run() -> anyhow::Result<()> {
    packages()?;
    kubernetes_validate()
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    shell::run(Command::new("apt-get").args(["update", "-qq"]))?;
    shell::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn kubernetes_validate() -> anyhow::Result<()> {
    let on_path = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let venv = shell::target_dir().join(KUBERNETES_VALIDATE_VENV);
    if on_path || venv.join("bin/kubernetes-validate").exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing kubernetes-validate into {}",
        venv.display()
    );
    shell::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    shell::run(Command::new(venv.join("bin/pip")).args(["install", "-q", "kubernetes-validate"]))
}
