//! Developer tasks for netguard: `cargo xtask <task>`. Building, installing what the tests
//! need, the VM test bed and benchmarks live here rather than in scattered shell scripts.

mod bench;
mod fuzz;
mod layers;
mod package;
mod setup;
mod shell;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the Debian packages the build and the tests need (idempotent).
    Setup,
    /// Set up, build, and run netguard's main job on this host.
    Run {
        /// Arguments passed to `netguard` (default: `agent`).
        args: Vec<String>,
    },
    /// Set up and run every test: unit, privileged host tests, and the VM suite.
    Test {
        #[command(flatten)]
        vm: vm::VmArgs,
    },
    /// Run the eBPF/NIC suite inside QEMU guests with Debian's kernels.
    VmTest {
        #[command(flatten)]
        vm: vm::VmArgs,
    },
    /// Kill the agent at each step of a refund, a lend and a driver-reload repair in the
    /// guests, restart it, and check every run converges.
    Faults {
        #[command(flatten)]
        faults: vm::faults::FaultArgs,
    },
    /// Fuzz every parser of outside input (libFuzzer, coverage-guided) for N seconds each.
    Fuzz {
        #[command(flatten)]
        fuzz: fuzz::FuzzArgs,
    },
    /// Build release binaries and run the benchmarks (as root, in namespaces they create, and
    /// in QEMU guests): one table, and the same as JSON in <target dir>/bench/latest.json.
    Bench {
        #[command(flatten)]
        bench: bench::BenchArgs,
    },
    /// Build the Debian package (target/package/netguard_VERSION_amd64.deb) and check it
    /// with lintian.
    Package {
        #[command(flatten)]
        package: package::PackageArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Task::Run { args } => run(args),
        Task::Test { vm } => test(&vm),
        Task::VmTest { vm } => setup::run()
            .and_then(|()| vm::run(&vm))
            .map(|t| t.exit_code()),
        Task::Faults { faults } => setup::run()
            .and_then(|()| vm::faults::run(&faults))
            .map(|t| t.exit_code()),
        Task::Fuzz { fuzz } => fuzz::run(&fuzz),
        Task::Bench { bench } => bench::run(&bench),
        Task::Package { package } => setup::run()
            .and_then(|()| package::run(&package))
            .map(|_| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> anyhow::Result<ExitCode> {
    setup::run()?;
    shell::build_release(&["netguard"])?;
    let args = if args.is_empty() {
        vec!["agent".to_string()]
    } else {
        args
    };
    let status = std::process::Command::new(shell::target_dir().join("release/netguard"))
        .args(&args)
        .status()?;
    Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
}

/// Passed/failed counts of one part of the test run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub passed: u32,
    pub failed: u32,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }

    fn exit_code(self) -> ExitCode {
        if self.failed == 0 && self.passed > 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

fn test(vm_args: &vm::VmArgs) -> anyhow::Result<ExitCode> {
    setup::run()?;
    let mut total = Tally::default();
    let cargo_tests = shell::cargo_test()?;
    println!(
        "cargo tests: {} passed, {} failed",
        cargo_tests.passed, cargo_tests.failed
    );
    total.add(cargo_tests);
    total.add(layers::check()?);
    let fuzzed = fuzz::fuzz(&fuzz::TARGETS, fuzz::SHORT_SECONDS)?;
    println!("fuzz: {} passed, {} failed", fuzzed.passed, fuzzed.failed);
    total.add(fuzzed);
    let vm = vm::run(vm_args)?;
    total.add(vm);
    println!("total: {} passed, {} failed", total.passed, total.failed);
    Ok(total.exit_code())
}
