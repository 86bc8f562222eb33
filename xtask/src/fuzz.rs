//! `cargo xtask fuzz [--seconds N] [--target NAME]...`: coverage-guided fuzzing of every parser
//! of outside input with libFuzzer, on stable Rust (docs/reliability.md says why not
//! cargo-fuzz). The targets live in `fuzz/` (a workspace of its own, built with coverage
//! instrumentation into `<target dir>/fuzz`); each starts from the seeds in `fuzz/seeds/NAME`
//! (real files) and keeps what it learns in `<target dir>/fuzz/corpus/NAME`. A crash leaves its
//! input in `<target dir>/fuzz/artifacts/NAME/` and fails the run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context};
use clap::Args;

use crate::shell::{run as run_command, target_dir, workspace_root};
use crate::Tally;

/// Every target, one per parser of outside input.
pub const TARGETS: [&str; 6] = [
    "ledger_doc",
    "journal",
    "cni",
    "api",
    "config",
    "bpf_record",
];

/// Seconds per target in `cargo xtask test`: enough to replay the seeds and mutate a while.
pub const SHORT_SECONDS: u64 = 5;

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// What cargo-fuzz passes for `--sanitizer none`: SanitizerCoverage (stable `-C` options)
/// feeding libFuzzer's edge, counter and comparison guidance, plus debug assertions and
/// overflow checks so that arithmetic slips crash too.
const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Only this target (repeatable; default: all).
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<ExitCode> {
    for name in &args.targets {
        if !TARGETS.contains(&name.as_str()) {
            bail!(
                "no fuzz target {name}: the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    let tally = fuzz(&targets, args.seconds)?;
    println!("fuzz: {} passed, {} failed", tally.passed, tally.failed);
    Ok(tally.exit_code())
}

/// Builds the targets and runs each for `seconds`, one after another; a target passes when it
/// ran without a crash.
pub fn fuzz(targets: &[&str], seconds: u64) -> anyhow::Result<Tally> {
    let dir = fuzz_dir();
    build(&dir)?;
    let mut tally = Tally::default();
    for target in targets {
        match run_target(&dir, target, seconds)? {
            Finding::Clean { runs, corpus } => {
                println!(
                    "fuzz {target}: {runs} runs in {seconds} s, corpus {corpus} inputs, no crash"
                );
                tally.passed += 1;
            }
            Finding::Crash { artifacts, log } => {
                println!(
                    "fuzz {target}: CRASH, input kept in {} (log: {}); reproduce with {} FILE",
                    artifacts.display(),
                    log.display(),
                    binary(&dir, target).display()
                );
                tally.failed += 1;
            }
        }
    }
    Ok(tally)
}

fn fuzz_dir() -> PathBuf {
    target_dir().join("fuzz")
}

fn binary(dir: &Path, target: &str) -> PathBuf {
    dir.join(TRIPLE).join("release").join(target)
}

/// An explicit `--target`, so that RUSTFLAGS reach only the code under test, not build
/// scripts and proc macros (which would then need libFuzzer's symbols).
fn build(dir: &Path) -> anyhow::Result<()> {
    let manifest = workspace_root().join("fuzz/Cargo.toml");
    run_command(
        Command::new(env!("CARGO"))
            .args(["build", "--release", "--bins", "--target", TRIPLE])
            .arg("--manifest-path")
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", dir)
            .env("RUSTFLAGS", RUSTFLAGS),
    )
    .context("building the fuzz targets (needs a C++ compiler for libFuzzer)")
}

enum Finding {
    Clean { runs: u64, corpus: usize },
    Crash { artifacts: PathBuf, log: PathBuf },
}

fn run_target(dir: &Path, target: &str, seconds: u64) -> anyhow::Result<Finding> {
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    let logs = dir.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let seeds = workspace_root().join("fuzz/seeds").join(target);
    let log = logs.join(format!("{target}.log"));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let status = Command::new(binary(dir, target))
        .arg(&corpus)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
        .stdout(Stdio::null())
        .stderr(log_file)
        .status()
        .with_context(|| format!("cannot run the fuzz target {target}"))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        return Ok(Finding::Crash { artifacts, log });
    }
    let runs = text
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("{target} printed no run count (see {})", log.display()))?;
    let corpus = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    Ok(Finding::Clean { runs, corpus })
}
