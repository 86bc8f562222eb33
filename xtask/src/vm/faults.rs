//! `cargo xtask faults`: the kill-point fault runs (`tests/vm/faults.rs`) in the guests. The
//! agent is SIGKILLed at each step of a refund repair, a lend and a driver-reload repair, then
//! restarted; every run must converge. One guest boot per kernel runs them all.

use std::time::{Duration, Instant};

use clap::Args;

use super::{build_suite, kernel::Series, Guest, KernelChoice, SUITE_NICS};
use crate::Tally;

#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Kill runs per repair kind on 6.12 (the faster guest under TCG); 6.1 gets a fifth of
    /// them (at least one). With `--kernel 6.1` alone, 6.1 gets them all.
    #[arg(long, default_value_t = 50)]
    pub runs: u32,
    /// Which Debian kernel series to boot.
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,
    /// Give up on a guest after this many seconds (a hang is a failure).
    #[arg(long, default_value_t = 7200)]
    pub timeout: u64,
}

pub fn run(args: &FaultArgs) -> anyhow::Result<Tally> {
    build_suite()?;
    let mut total = Tally::default();
    for &series in args.kernel.series() {
        let runs = match series {
            Series::V6_1 if args.kernel != KernelChoice::V6_1 => (args.runs / 5).max(1),
            _ => args.runs,
        };
        let guest = Guest {
            suite_args: vec!["--faults".to_string(), runs.to_string()],
            profile: "debug",
            nics: SUITE_NICS,
            timeout: Duration::from_secs(args.timeout),
        };
        let started = Instant::now();
        let tally = match guest.run(series) {
            Ok(console) => console.tally,
            Err(err) => {
                println!("faults {}: could not run: {err:#}", series.label());
                Tally {
                    passed: 0,
                    failed: 1,
                }
            }
        };
        println!(
            "faults {}: {runs} runs per kind: {} passed, {} failed, {:.0} s",
            series.label(),
            tally.passed,
            tally.failed,
            started.elapsed().as_secs_f64()
        );
        total.add(tally);
    }
    Ok(total)
}
