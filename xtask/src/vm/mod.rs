//! The VM test bed: Debian's distro kernels with emulated e1000 NICs under QEMU (TCG), running
//! the in-guest suite (`tests/vm`) and reading its verdicts from the serial console.

mod initramfs;
mod kernel;
mod qemu;

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::{shell, Tally};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelChoice {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    All,
}

#[derive(Debug, Args)]
pub struct VmArgs {
    /// Which Debian kernel series to boot.
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,
    /// Tracer backends the suite exercises (comma-separated).
    #[arg(long, default_value = "kprobe,fentry")]
    pub backends: String,
    /// Only scenarios whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Give up on a guest after this many seconds (a hang is a failure).
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

/// Where the VM test bed keeps downloads and builds.
fn vm_dir() -> PathBuf {
    shell::workspace_root().join("target/vm")
}

pub fn run(args: &VmArgs) -> anyhow::Result<Tally> {
    shell::cargo(&["build", "-p", "netguard", "-p", "netguard-tests", "--bins"])?;
    let series: &[kernel::Series] = match args.kernel {
        KernelChoice::V6_1 => &[kernel::Series::V6_1],
        KernelChoice::V6_12 => &[kernel::Series::V6_12],
        KernelChoice::All => &[kernel::Series::V6_1, kernel::Series::V6_12],
    };
    let mut total = Tally::default();
    for s in series {
        let tally = match run_one(*s, args) {
            Ok(tally) => tally,
            Err(err) => {
                println!("vm {}: could not run: {err:#}", s.label());
                Tally {
                    passed: 0,
                    failed: 1,
                }
            }
        };
        println!(
            "vm {}: {} passed, {} failed",
            s.label(),
            tally.passed,
            tally.failed
        );
        total.add(tally);
    }
    Ok(total)
}

fn run_one(series: kernel::Series, args: &VmArgs) -> anyhow::Result<Tally> {
    let kernel = kernel::prepare(series, &vm_dir())?;
    let mut suite_args = vec!["--backends".to_string(), args.backends.clone()];
    if let Some(filter) = &args.filter {
        suite_args.extend(["--filter".to_string(), filter.clone()]);
    }
    let initrd = initramfs::build(&kernel, &suite_args, &vm_dir())?;
    const BOOTS: u32 = 3;
    for attempt in 1..=BOOTS {
        match qemu::boot(
            &kernel,
            &initrd,
            series.label(),
            std::time::Duration::from_secs(args.timeout),
        )? {
            qemu::Boot::Ran(tally) => return Ok(tally),
            qemu::Boot::DiedBooting if attempt < BOOTS => println!(
                "vm {}: booting again ({attempt} of {BOOTS} boots failed)",
                series.label()
            ),
            qemu::Boot::DiedBooting => {}
        }
    }
    anyhow::bail!("the guest died before the suite started in {BOOTS} boots")
}
