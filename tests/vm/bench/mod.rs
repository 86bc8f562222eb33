//! The VM benchmarks (items 3 and 4 of the benchmark issue), run instead of the suite when the
//! guest's init passes `--bench PLAN`: the agent's reaction to a refunded NIC and to a driver
//! reload, per backend, and the tracers' cost per netns move. Each result is printed as one
//! `NGVM BENCH {json}` line for `cargo xtask bench`.
//!
//! Contenders are measured side by side in the same guest, in rounds that run every contender
//! in a rotated order (so drift hits all alike), each warmed up untimed first.

mod cost;
mod reaction;
pub mod results;
// The host benchmark's summaries, so both report percentiles alike.
#[path = "../../../bench/src/stats.rs"]
pub mod stats;

use netguard::trace::BackendKind;

use results::{Line, Plan};

type Outcome = Result<(), String>;

/// Runs every benchmark of `plan` with `backends`; a verdict per part.
pub async fn run(plan: Plan, backends: &[BackendKind]) -> Vec<(String, Outcome)> {
    let mut verdicts = Vec::new();
    if plan.refunds + plan.reloads > 0 {
        for result in reaction::run(plan, backends).await {
            let name = format!("bench/reaction-{}", result.backend);
            verdicts.push((name, failures(&result.failures)));
            print_line(Line::Reaction(result));
        }
    }
    if plan.moves > 0 {
        let result = cost::run(plan, backends).await;
        verdicts.push(("bench/tracer-cost".into(), failures(&result.failures)));
        print_line(Line::TracerCost(result));
    }
    verdicts
}

fn failures(list: &[String]) -> Outcome {
    match list.is_empty() {
        true => Ok(()),
        false => Err(list.join("\n  ")),
    }
}

fn print_line(line: Line) {
    match serde_json::to_string(&line) {
        Ok(json) => println!("NGVM BENCH {json}"),
        Err(e) => println!("NGVM FAIL bench/encode: {e}"),
    }
}

/// A progress line on the console, stamped with the guest's uptime (where a run's time goes).
pub fn info(message: std::fmt::Arguments<'_>) {
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let seconds = uptime.split_whitespace().next().unwrap_or("?");
    println!("NGVM INFO bench [{seconds}s] {message}");
}

/// `items` rotated left by `round`: each round starts with the next contender.
fn rotated<T: Copy>(items: &[T], round: usize) -> Vec<T> {
    let mut order = items.to_vec();
    if !order.is_empty() {
        order.rotate_left(round % items.len());
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_the_order() {
        assert_eq!(rotated(&[1, 2, 3], 0), [1, 2, 3]);
        assert_eq!(rotated(&[1, 2, 3], 4), [2, 3, 1]);
        assert!(rotated::<u8>(&[], 1).is_empty());
    }
}
