//! All results of one run: printed as one table, written as JSON.

use std::fmt::Write;

use serde::Serialize;

use crate::mass::{Contender, MassResult};
use crate::podman::PodmanCost;
use crate::reaction::ReactionResult;
use crate::scale::ScaleResult;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        };
        Machine {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            cpu: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: field(&meminfo, "MemTotal")
                .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb / 1024),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub quick: bool,
    pub mass_restore: Vec<MassResult>,
    pub reaction: Option<ReactionResult>,
    pub scale: Option<ScaleResult>,
    pub podman: Option<PodmanCost>,
}

impl Results {
    pub fn new(quick: bool) -> Results {
        Results {
            machine: Machine::read(),
            quick,
            mass_restore: vec![],
            reaction: None,
            scale: None,
            podman: None,
        }
    }

    pub fn table(&self) -> String {
        let m = &self.machine;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "netguard benchmarks{}: Linux {}, {} x {}, {} MiB",
            if self.quick { " (quick)" } else { "" },
            m.kernel,
            m.cores,
            m.cpu,
            m.memory_mib
        );
        if !self.mass_restore.is_empty() {
            let _ = writeln!(
                t,
                "\n1. Mass restore: seconds until every link is back (median of the timed rounds)"
            );
            let _ = write!(t, "{:<30}", "");
            for r in &self.mass_restore {
                let _ = write!(t, "{:>12}", format!("N={}", r.n));
            }
            let _ = writeln!(t);
            for c in [
                Contender::Netguard,
                Contender::Agent,
                Contender::Baseline,
                Contender::Floor,
            ] {
                row(&mut t, c.label(), &self.mass_restore, |r| {
                    r.seconds.get(&c).map(|s| format!("{:.3}", s.median))
                });
            }
            row(&mut t, "baseline / netguard", &self.mass_restore, |r| {
                r.baseline_over_netguard.map(|x| format!("{x:.1}x"))
            });
            row(&mut t, "netguard / floor", &self.mass_restore, |r| {
                r.netguard_over_floor.map(|x| format!("{x:.2}x"))
            });
            row(&mut t, "timed rounds", &self.mass_restore, |r| {
                Some(r.rounds.to_string())
            });
        }
        let ms = |x: f64| format!("{:.1} ms", x * 1e3);
        if let Some(r) = &self.reaction {
            let _ = writeln!(
                t,
                "\n2. Reaction latency, agent running: one netns re-created -> its veth back"
            );
            let l = &r.latency;
            let _ = writeln!(
                t,
                "{:<30}{:>12}{:>12}   ({} trials)",
                "p50 / p99",
                ms(l.median),
                ms(l.p99),
                r.trials
            );
        }
        if let Some(s) = &self.scale {
            let _ = writeln!(
                t,
                "\n5. Scale: {} guarded links in {} netns, all healthy",
                s.links, s.links
            );
            let c = &s.idle_pass_cpu;
            let _ = writeln!(
                t,
                "{:<30}{:>12}{:>12}   (median, p99)",
                "idle reconcile pass CPU",
                ms(c.median),
                ms(c.p99)
            );
            let _ = writeln!(
                t,
                "{:<30}{:>12}",
                "agent RSS",
                format!("{:.1} MiB", s.agent_rss_bytes as f64 / 1048576.0)
            );
            let _ = writeln!(
                t,
                "{:<30}{:>12}   (per second, idle)",
                "agent CPU",
                ms(s.agent_idle_cpu_per_second)
            );
            let _ = writeln!(
                t,
                "{:<30}{:>12}{:>12}   (median, p99)",
                "status --json wall",
                ms(s.status.median),
                ms(s.status.p99)
            );
            let _ = writeln!(
                t,
                "{:<30}{:>12}",
                "ledger on disk",
                format!("{} KiB", s.ledger_bytes / 1024)
            );
            let _ = writeln!(
                t,
                "{:<30}{:>12}{:>12}   (median, p99)",
                "ledger save",
                ms(s.save.median),
                ms(s.save.p99)
            );
            let _ = writeln!(
                t,
                "{:<30}{:>12}{:>12}   (median, p99; {} KiB)",
                "GET /metrics wall",
                ms(s.scrape.median),
                ms(s.scrape.p99),
                s.scrape_bytes / 1024
            );
            let _ = writeln!(
                t,
                "{:<30}{:>12}   (mean of idle passes, the agent's own histogram)",
                "agent reconcile pass wall",
                ms(s.agent_pass_seconds)
            );
            let _ = writeln!(
                t,
                "{:<30}{:>12}   (RSS after: {:.1} MiB)",
                format!("{} re-created -> all back", s.burst),
                format!("{:.2} s", s.burst_back_seconds),
                s.agent_rss_after_burst_bytes as f64 / 1048576.0
            );
        }
        if let Some(p) = &self.podman {
            t.push_str(&p.table());
        }
        t
    }
}

fn row(
    t: &mut String,
    label: &str,
    results: &[MassResult],
    cell: impl Fn(&MassResult) -> Option<String>,
) {
    let _ = write!(t, "{label:<30}");
    for r in results {
        let _ = write!(t, "{:>12}", cell(r).unwrap_or_else(|| "-".into()));
    }
    let _ = writeln!(t);
}
