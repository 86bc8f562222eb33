//! The VM test bed: Debian's distro kernels with emulated e1000 NICs under QEMU (TCG), running
//! the in-guest suite (`tests/vm`) and reading its verdicts from the serial console.

pub mod bench;
pub mod faults;
mod initramfs;
mod kernel;
mod qemu;

use std::path::PathBuf;
use std::time::Duration;

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

impl KernelChoice {
    fn series(self) -> &'static [kernel::Series] {
        match self {
            KernelChoice::V6_1 => &[kernel::Series::V6_1],
            KernelChoice::V6_12 => &[kernel::Series::V6_12],
            KernelChoice::All => &[kernel::Series::V6_1, kernel::Series::V6_12],
        }
    }
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
    /// Give up on a guest after this many seconds (a hang is a failure; the 6.1 guest's suite
    /// takes about 30 min under TCG on a 2-core machine).
    #[arg(long, default_value_t = 2700)]
    pub timeout: u64,
}

/// Where the VM test bed keeps downloads and builds.
fn vm_dir() -> PathBuf {
    shell::target_dir().join("vm")
}

/// The suite's guest: three NICs (eth0 stays home, two get lent out at once).
const SUITE_NICS: usize = 3;

/// Builds what the guest runs: the agent with its kill points (`fault-points`, for the fault
/// runs; a release or package build never has them) and the in-guest suite.
fn build_suite() -> anyhow::Result<()> {
    shell::cargo(&[
        "build",
        "-p",
        "netguard",
        "-p",
        "netguard-tests",
        "--bins",
        "--features",
        "netguard/fault-points",
    ])
}

pub fn run(args: &VmArgs) -> anyhow::Result<Tally> {
    build_suite()?;
    let mut suite_args = vec!["--backends".to_string(), args.backends.clone()];
    if let Some(filter) = &args.filter {
        suite_args.extend(["--filter".to_string(), filter.clone()]);
    }
    let guest = Guest {
        suite_args,
        profile: "debug",
        nics: SUITE_NICS,
        timeout: Duration::from_secs(args.timeout),
    };
    let mut total = Tally::default();
    for s in args.kernel.series() {
        let tally = match guest.run(*s) {
            Ok(console) => console.tally,
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

/// A guest to boot: what its init passes to `vm-suite`, from which build, with how many NICs.
struct Guest {
    suite_args: Vec<String>,
    profile: &'static str,
    nics: usize,
    timeout: Duration,
}

/// A guest that ran on one kernel.
struct Ran {
    release: String,
    console: qemu::Console,
}

impl Guest {
    fn run(&self, series: kernel::Series) -> anyhow::Result<qemu::Console> {
        self.run_on(series).map(|ran| ran.console)
    }

    fn run_on(&self, series: kernel::Series) -> anyhow::Result<Ran> {
        let kernel = kernel::prepare(series, &vm_dir())?;
        let initrd = initramfs::build(&kernel, &self.suite_args, self.profile, &vm_dir())?;
        const BOOTS: u32 = 3;
        for attempt in 1..=BOOTS {
            match qemu::boot(&kernel, &initrd, self.nics, series.label(), self.timeout)? {
                qemu::Boot::Ran(console) => {
                    return Ok(Ran {
                        release: kernel.release,
                        console,
                    })
                }
                qemu::Boot::DiedBooting if attempt < BOOTS => println!(
                    "vm {}: booting again ({attempt} of {BOOTS} boots failed)",
                    series.label()
                ),
                qemu::Boot::DiedBooting => {}
            }
        }
        anyhow::bail!("the guest died before the suite started in {BOOTS} boots")
    }
}
