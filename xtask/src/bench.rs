//! `cargo xtask bench [--quick] [--only host|vm|podman|scale] [--links N] [--podman-chain]
//! [--kernel ..]`: the host benchmarks (`netguard-bench`, in network namespaces it creates and
//! removes) and the VM benchmarks (in QEMU guests with Debian's kernels and e1000 NICs), one
//! table for both, and the same results in `<target dir>/bench/latest.json` (the VM part under
//! `vm`).

use std::process::{Command, ExitCode, Stdio};

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::vm::{self, KernelChoice};
use crate::{setup, shell};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Host,
    Vm,
    /// Only the host's podman start / CNI ADD cost (also part of `host`).
    Podman,
    /// The host part's scale benchmark alone (`--links` sets its size).
    Scale,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Smaller sizes and fewer rounds (minutes, for development).
    #[arg(long)]
    quick: bool,
    /// Only this part (for development); the JSON then holds only it.
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Which Debian kernel series the VM part boots.
    #[arg(long, value_enum, default_value = "all")]
    kernel: KernelChoice,
    /// Guarded links (and netns) of the scale benchmark, e.g. 10000.
    #[arg(long, default_value_t = 1000)]
    links: usize,
    /// The podman part on the chain `podman network create` writes (bridge, portmap,
    /// firewall, tuning) rather than bridge alone, on both sides.
    #[arg(long)]
    podman_chain: bool,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    setup::run()?;
    let wants = |part| args.only.is_none_or(|only| only == part);
    let json_path = shell::target_dir().join("bench/latest.json");
    let mut table = String::new();
    let mut json = serde_json::json!({});
    let links = args.links.to_string();
    let mut host_args: Option<Vec<&str>> = match args.only {
        Some(Part::Scale) => Some(vec!["--parts", "scale", "--scale-links", &links]),
        Some(Part::Podman) => Some(vec!["--parts", "podman"]),
        Some(Part::Vm) => None,
        Some(Part::Host) | None => Some(vec!["--scale-links", &links]),
    };
    if let (Some(host_args), true) = (host_args.as_mut(), args.podman_chain) {
        host_args.push("--podman-chain");
    }
    if let Some(host_args) = host_args {
        table.push_str(&host(args.quick, &host_args)?);
        let text = std::fs::read(&json_path)
            .with_context(|| format!("the host bench wrote no {}", json_path.display()))?;
        json = serde_json::from_slice(&text)
            .with_context(|| format!("reading {}", json_path.display()))?;
    }
    let mut failed = 0;
    if wants(Part::Vm) {
        let results = vm::bench::run(args.quick, args.kernel)?;
        table.push_str(&results.table());
        failed = results.failed();
        json["vm"] = serde_json::to_value(&results)?;
    }
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json_path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("\n{table}");
    println!("results written to {}", json_path.display());
    if failed > 0 {
        println!("{failed} VM benchmark failures (see the `vm ...: FAIL` lines above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `netguard-bench` (it writes the JSON), passing its progress through and returning its
/// table, which goes at the head of the combined one.
fn host(quick: bool, args: &[&str]) -> anyhow::Result<String> {
    shell::build_release(&["netguard", "netguard-shim", "netguard-bench"])?;
    let target = shell::target_dir();
    let mut bench = Command::new(target.join("release/netguard-bench"));
    bench
        .arg("--json")
        .arg(target.join("bench/latest.json"))
        .args(args);
    if quick {
        bench.arg("--quick");
    }
    let out = bench
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {bench:?}"))?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        print!("{table}");
        anyhow::bail!("{bench:?} failed ({})", out.status);
    }
    Ok(table)
}
