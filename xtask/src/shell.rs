//! Running commands, and where things are.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::Tally;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (a relative one is taken from
/// the workspace root, where every cargo this task runs is started), else `target/`. Every
/// path into the build (binaries, the VM test bed, bench results) starts here.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout, failing with its stderr.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace_root()))
}

/// `cargo build --release` of these packages' binaries, into `target/release`. The shim is
/// linked statically (see [`build_static_shim`]).
pub fn build_release(packages: &[&str]) -> anyhow::Result<()> {
    let others: Vec<&str> = packages.iter().copied().filter(|p| *p != SHIM).collect();
    if !others.is_empty() {
        let mut args = vec!["build", "--release", "--bins"];
        for p in others {
            args.extend(["-p", p]);
        }
        cargo(&args)?;
    }
    if packages.contains(&SHIM) {
        build_static_shim()?;
    }
    Ok(())
}

const SHIM: &str = "netguard-shim";

/// `netguard-shim` linked statically (glibc's `crt-static`) at a fixed address, put in
/// `target/release` beside `netguard`, where the package and the bench take it from. Runtimes
/// exec it three times per container start: with no dynamic loader an exec costs 1.5 -> 1.1
/// ms here, and with no relocations to apply at start (no PIE) 0.13 ms less again
/// (docs/benchmarks.md section 7). Address randomisation guards against memory corruption,
/// which safe Rust rules out; the shim's only input is from the root runtime that runs it.
/// Built for the host's triple named explicitly, so the flags reach only the target's code:
/// proc macros cannot be built with them.
fn build_static_shim() -> anyhow::Result<()> {
    let triple = output(Command::new("rustc").arg("-vV"))?
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` names no host triple")?;
    let flags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        triple.to_uppercase().replace('-', "_")
    );
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", SHIM, "--target", &triple])
        .env(
            flags_var,
            "-C target-feature=+crt-static -C relocation-model=static",
        )
        .current_dir(workspace_root()))?;
    let target = target_dir();
    let built = target.join(&triple).join("release").join(SHIM);
    let beside = target.join("release").join(SHIM);
    // Copied under another name and renamed, so no one runs a half-written shim.
    let partial = beside.with_extension("partial");
    std::fs::create_dir_all(target.join("release"))?;
    std::fs::copy(&built, &partial)
        .with_context(|| format!("cannot copy {} to {}", built.display(), partial.display()))?;
    std::fs::rename(&partial, &beside)
        .with_context(|| format!("cannot put the static shim at {}", beside.display()))?;
    Ok(())
}

/// `cargo test` over the workspace (unit and privileged host tests), counting the results
/// from its `test result:` lines while passing its output through.
pub fn cargo_test() -> anyhow::Result<Tally> {
    let out = Command::new(env!("CARGO"))
        .args(["test", "--workspace", "--no-fail-fast"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo test")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let mut tally = Tally::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let count: u32 = count
                .trim_start_matches("ok.")
                .trim_start_matches("FAILED.")
                .trim()
                .parse()
                .unwrap_or(0);
            match label {
                "passed" => tally.passed += count,
                "failed" => tally.failed += count,
                _ => {}
            }
        }
    }
    if !out.status.success() && tally.failed == 0 {
        // A build failure runs no test: count it as one failure rather than pass silently.
        tally.failed += 1;
    }
    Ok(tally)
}
