//! Boots a guest and reads the suite's verdicts from its serial console.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::initramfs::MARK;
use super::kernel::Kernel;
use crate::Tally;

/// What the suite printed: its verdicts, and the benchmark's result lines.
#[derive(Default)]
pub struct Console {
    pub tally: Tally,
    /// The JSON of every `NGVM BENCH {json}` line.
    pub bench: Vec<String>,
}

/// How a guest run ended.
pub enum Boot {
    /// The suite ran (to its end, or until the guest died or hung: counted as a failure).
    Ran(Console),
    /// The guest died before the suite started: a boot failure of the emulated machine
    /// (MTTCG has been seen to oops while the kernel patches its own text at boot).
    DiedBooting,
}

/// Boots `kernel` with `nics` e1000 NICs on one hub (eth0 stays home, the others get lent out).
pub fn boot(
    kernel: &Kernel,
    initrd: &Path,
    nics: usize,
    label: &str,
    timeout: Duration,
) -> anyhow::Result<Boot> {
    let log_path = initrd.with_extension("console.log");
    let mut log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new("qemu-system-x86_64");
    // KVM guests hang at boot on these machines: TCG it is.
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1536"])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-net",
            "none",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 oops=panic"]);
    for n in 1..=nics {
        cmd.args([
            "-netdev",
            &format!("hubport,id=n{n},hubid=0"),
            "-device",
            &format!("e1000,netdev=n{n}"),
        ]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start qemu-system-x86_64: run `cargo xtask setup`")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut console = Console::default();
    let mut finished = false;
    let mut suite_started = false;
    let mut tail: Vec<String> = Vec::new();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                writeln!(log, "{line}")?;
                tail.push(line.clone());
                if tail.len() > 30 {
                    tail.remove(0);
                }
                let Some(pos) = line.find(MARK) else { continue };
                let msg = &line[pos + MARK.len()..].trim();
                println!("vm {label}: {msg}");
                if msg.starts_with("PASS") {
                    console.tally.passed += 1;
                } else if msg.starts_with("FAIL") {
                    console.tally.failed += 1;
                } else if let Some(json) = msg.strip_prefix("BENCH ") {
                    console.bench.push(json.to_string());
                } else if msg.starts_with("END") {
                    finished = true;
                } else if msg.starts_with("START") {
                    suite_started = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                println!(
                    "vm {label}: FAIL guest still running after {}s (hang)",
                    timeout.as_secs()
                );
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    if !suite_started {
        println!(
            "vm {label}: the guest died before the suite started; console log {}:",
            log_path.display()
        );
        for line in tail.iter().rev().take(8).rev() {
            println!("vm {label}:   | {line}");
        }
        return Ok(Boot::DiedBooting);
    }
    if !finished {
        console.tally.failed += 1;
        println!("vm {label}: FAIL the guest stopped before the suite ended (panic, crash or hang); console log {}:", log_path.display());
        for line in &tail {
            println!("vm {label}:   | {line}");
        }
    }
    println!(
        "vm {label}: guest ran {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(Boot::Ran(console))
}
