//! `cargo xtask bench [--quick]`: builds the release binaries and runs `netguard-bench`, which
//! builds each benchmark's world in network namespaces it creates and removes, prints one
//! table, and writes the same results to `target/bench/latest.json`.

use std::process::{Command, ExitCode};

use crate::{setup, shell};

pub fn run(quick: bool) -> anyhow::Result<ExitCode> {
    setup::run()?;
    shell::cargo(&[
        "build",
        "--release",
        "-p",
        "netguard",
        "-p",
        "netguard-bench",
    ])?;
    let target = shell::workspace_root().join("target");
    let mut bench = Command::new(target.join("release/netguard-bench"));
    bench.arg("--json").arg(target.join("bench/latest.json"));
    if quick {
        bench.arg("--quick");
    }
    shell::run(&mut bench)?;
    Ok(ExitCode::SUCCESS)
}
