//! The VM part of `cargo xtask bench` (benchmarks 3 and 4): boots a release build of the
//! in-guest suite with `--bench PLAN` on each kernel, collects its `NGVM BENCH` lines, and
//! renders them as the table's VM sections.

use std::fmt::Write;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{kernel, Guest, KernelChoice};
use crate::shell;

// The guest's result types and the host benchmark's summaries, compiled here as well so that
// what the guest prints is read back with the same definitions.
#[allow(dead_code)]
#[path = "../../../tests/vm/bench/results.rs"]
mod results;
#[allow(dead_code)]
#[path = "../../../bench/src/stats.rs"]
mod stats;

pub use results::Plan;
use results::{Line, Reaction, TracerCost};
use stats::Samples;

/// Every backend, in the order the table shows them.
const BACKENDS: &str = "kprobe,fentry,netlink";

/// The benchmark guest has two NICs: eth0 stays home (so a refunded eth1 finds its container
/// name `eth0` taken and comes back as devN) and eth1 is lent and carries the vlan. A third NIC
/// would change nothing measured but would make every driver reload probe one more emulated
/// NIC, which is most of a reload's time under TCG.
const BENCH_NICS: usize = 2;

/// Everything the VM part measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmResults {
    pub plan: Plan,
    /// Why these trial counts (see `plan()`).
    pub plan_reason: String,
    pub nics: usize,
    pub kernels: Vec<KernelResults>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KernelResults {
    pub series: String,
    pub release: Option<String>,
    /// Wall time of this kernel's part (packing the initramfs, boots, the run), s.
    pub guest_seconds: f64,
    pub passed: u32,
    pub failed: u32,
    /// Why the guest could not run, if it could not.
    pub error: Option<String>,
    pub reaction: Vec<Reaction>,
    pub tracer_cost: Option<TracerCost>,
}

/// The trial counts, and why. `--quick` keeps the VM part to a few minutes for both kernels;
/// the full run takes the counts.
pub fn plan(quick: bool) -> (Plan, String) {
    if quick {
        let plan = Plan {
            refunds: 3,
            reloads: 2,
            moves: 100,
            // One round: every agent start or eBPF attach costs seconds under TCG, and a
            // second round would take `cargo xtask bench --quick` past 10 minutes.
            rounds: 1,
        };
        return (
            plan,
            "quick: a few trials of each in one round, for development".into(),
        );
    }
    let plan = Plan {
        refunds: 50,
        reloads: 50,
        moves: 2000,
        rounds: 5,
    };
    let reason = "the issue's counts: a driver-reload trial costs ~3 s of TCG guest time with two \
                  NICs (a full run with 35 reloads took 30 min for both kernels), so 50 keep the \
                  VM part near 35-40 min"
        .to_string();
    (plan, reason)
}

pub fn run(quick: bool, kernels: KernelChoice) -> anyhow::Result<VmResults> {
    shell::build_release(&["netguard", "netguard-tests"])?;
    let (plan, plan_reason) = plan(quick);
    println!("vm bench: {plan} per backend ({plan_reason})");
    let guest = Guest {
        suite_args: vec![
            "--bench".into(),
            plan.to_string(),
            "--backends".into(),
            BACKENDS.into(),
        ],
        profile: "release",
        nics: BENCH_NICS,
        timeout: if quick {
            Duration::from_secs(900)
        } else {
            Duration::from_secs(3600)
        },
    };
    let results = kernels
        .series()
        .iter()
        .map(|series| run_kernel(&guest, *series))
        .collect();
    Ok(VmResults {
        plan,
        plan_reason,
        nics: BENCH_NICS,
        kernels: results,
    })
}

fn run_kernel(guest: &Guest, series: kernel::Series) -> KernelResults {
    let started = Instant::now();
    let mut k = KernelResults {
        series: series.label().to_string(),
        release: None,
        guest_seconds: 0.0,
        passed: 0,
        failed: 0,
        error: None,
        reaction: vec![],
        tracer_cost: None,
    };
    match guest.run_on(series) {
        Ok(ran) => {
            k.release = Some(ran.release);
            k.passed = ran.console.tally.passed;
            k.failed = ran.console.tally.failed;
            for json in &ran.console.bench {
                match serde_json::from_str::<Line>(json) {
                    Ok(Line::Reaction(r)) => k.reaction.push(r),
                    Ok(Line::TracerCost(c)) => k.tracer_cost = Some(c),
                    Err(e) => {
                        k.failed += 1;
                        println!("vm {}: unreadable BENCH line ({e}): {json}", k.series);
                    }
                }
            }
        }
        Err(e) => {
            k.failed += 1;
            k.error = Some(format!("{e:#}"));
            println!("vm {}: could not run: {e:#}", k.series);
        }
    }
    k.guest_seconds = started.elapsed().as_secs_f64();
    println!(
        "vm {}: bench {} passed, {} failed, {:.0}s",
        k.series, k.passed, k.failed, k.guest_seconds
    );
    k
}

impl VmResults {
    pub fn failed(&self) -> u32 {
        self.kernels.iter().map(|k| k.failed).sum()
    }

    /// Sections 3 and 4 of the benchmark table.
    pub fn table(&self) -> String {
        let backends: Vec<&str> = BACKENDS.split(',').collect();
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\n3. Reaction latency, VM (QEMU TCG, {} e1000 NICs): ms, p50 / p99",
            self.nics
        );
        header(&mut t, &backends);
        let ms = |s: &Samples| match s.samples.is_empty() {
            true => "-".to_string(),
            false => format!("{:.0} / {:.0}", s.median * 1e3, s.p99 * 1e3),
        };
        for k in &self.kernels {
            kernel_line(&mut t, k);
            let cell = |pick: &dyn Fn(&Reaction) -> &Samples| {
                backends
                    .iter()
                    .map(|b| {
                        k.reaction
                            .iter()
                            .find(|r| r.backend == *b)
                            .map_or("-".into(), |r| ms(pick(r)))
                    })
                    .collect::<Vec<_>>()
            };
            row(&mut t, "  refund -> home name", &cell(&|r| &r.refund_home));
            row(
                &mut t,
                "  driver reload -> macvlan",
                &cell(&|r| &r.driver_reload),
            );
            row(
                &mut t,
                "    after modprobe returned",
                &cell(&|r| &r.after_modprobe),
            );
            let trials = |pick: &dyn Fn(&Reaction) -> &Samples| {
                k.reaction
                    .iter()
                    .map(|r| pick(r).samples.len().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let _ = writeln!(
                t,
                "  timed trials: {} refunds, {} reloads (per backend); failures: {}",
                trials(&|r| &r.refund_home),
                trials(&|r| &r.driver_reload),
                k.reaction.iter().map(|r| r.failures.len()).sum::<usize>()
            );
        }
        let _ = writeln!(
            t,
            "\n4. Tracer cost, VM: netns moves there and back, median of {} rounds",
            self.plan.rounds
        );
        let mut contenders = vec!["none"];
        contenders.extend(&backends);
        header(&mut t, &contenders);
        for k in &self.kernels {
            kernel_line(&mut t, k);
            let Some(cost) = &k.tracer_cost else {
                continue;
            };
            let cell = |f: &dyn Fn(&results::MoveCost) -> String| {
                contenders
                    .iter()
                    .map(|c| {
                        cost.contenders
                            .iter()
                            .find(|m| m.tracer == *c)
                            .map_or("-".into(), f)
                    })
                    .collect::<Vec<_>>()
            };
            row(
                &mut t,
                "  time per move",
                &cell(&|m| format!("{:.0} us", m.per_move.median * 1e6)),
            );
            row(
                &mut t,
                "  ratio to none",
                &cell(&|m| {
                    m.ratio_to_none
                        .as_ref()
                        .map_or("-".into(), |r| format!("{:.2}x", r.median))
                }),
            );
            row(
                &mut t,
                "  events seen / moves",
                &cell(&|m| match m.tracer.as_str() {
                    "none" => format!("- / {}", m.moves),
                    _ => format!("{} / {}", m.events_seen, m.moves),
                }),
            );
            row(
                &mut t,
                "  dropped",
                &cell(&|m| match m.tracer.as_str() {
                    "none" => "-".into(),
                    _ => m.dropped.to_string(),
                }),
            );
            if !cost.failures.is_empty() {
                let _ = writeln!(t, "  failures: {}", cost.failures.len());
            }
        }
        let p = &self.plan;
        let _ = writeln!(
            t,
            "\nVM trials per backend and kernel: {} refunds, {} driver reloads, {} moves, in {} rounds\nalternating the contenders, each warmed up untimed ({})",
            p.refunds, p.reloads, p.moves, p.rounds, self.plan_reason
        );
        t
    }
}

const LABEL: usize = 30;
const CELL: usize = 16;

fn header(t: &mut String, columns: &[&str]) {
    let _ = write!(t, "{:<LABEL$}", "");
    for c in columns {
        let _ = write!(t, "{c:>CELL$}");
    }
    let _ = writeln!(t);
}

fn kernel_line(t: &mut String, k: &KernelResults) {
    let _ = writeln!(
        t,
        "Linux {} ({:.0} s in the guest){}",
        k.release.as_deref().unwrap_or(&k.series),
        k.guest_seconds,
        k.error
            .as_deref()
            .map_or(String::new(), |e| format!(": could not run: {e}"))
    );
}

fn row(t: &mut String, label: &str, cells: &[String]) {
    let _ = write!(t, "{label:<LABEL$}");
    for c in cells {
        let _ = write!(t, "{c:>CELL$}");
    }
    let _ = writeln!(t);
}
