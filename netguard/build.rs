//! Compiles the kernel side (`netguard-ebpf/`, C with CO-RE) into `OUT_DIR/netguard.bpf.o`,
//! which `src/trace/ebpf` embeds.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// Tried in order; the first that runs is used.
const COMPILERS: &[&str] = &["clang-19", "clang"];

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = manifest.join("../netguard-ebpf");
    let source = root.join("src/netguard.bpf.c");
    let include = root.join("include");
    for dir in [root.join("src"), include.clone()] {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    // A clang installed later must be picked up without touching a source file.
    println!("cargo::rerun-if-env-changed=PATH");

    let Some(clang) = COMPILERS.iter().find(|c| runs(c)) else {
        // One line, as cargo shows it: "error: netguard@VERSION: netguard: clang ...".
        println!("cargo::error=netguard: clang (clang-19) not found: run the README's setup command (cargo xtask setup) first");
        return;
    };
    let object = out.join("netguard.bpf.o");
    let output = Command::new(clang)
        .args([
            "-target",
            "bpf",
            "-O2",
            "-g",
            "-Wall",
            "-mcpu=v3",
            "-D__TARGET_ARCH_x86",
        ])
        .arg("-I")
        .arg(&include)
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .output();
    match output {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!("netguard: {clang} failed to compile {}:", display(&source));
            eprintln!("{}", String::from_utf8_lossy(&o.stderr));
            exit(1);
        }
        Err(err) => {
            eprintln!("netguard: cannot run {clang}: {err}");
            exit(1);
        }
    }
}

fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn display(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
