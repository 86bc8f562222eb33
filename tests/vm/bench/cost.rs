//! Benchmark 4: what a tracer costs the kernel work it watches. A veth end is moved between
//! init_net and a netns and back, as fast as rtnetlink allows, with no tracer and with each
//! backend attached (in the same process, as the agent has it); per move, against no tracer in
//! the same round; and every move must be seen, none dropped (else the part fails).

use std::collections::HashMap;
use std::time::Duration;

use netguard::event::{Event, EventKind};
use netguard::trace::BackendKind;

use super::results::{MoveCost, Plan, TracerCost};
use super::stats::Samples;
use super::{info, rotated};
use crate::scenarios::{cleanup, ip};
use crate::{moves, Trace};

const DEVICE: &str = "mv0";
const NETNS: &str = "c3";
/// Untimed moves after each attach, before the timed ones (the first moves with a fresh tracer
/// also fault in its maps and ring buffer, and wake its reader for the first time).
const WARM_UP_MOVES: usize = 20;
/// Under TCG a backlog of events can take a while to be read after the moves end.
const EVENTS_WAIT: Duration = Duration::from_secs(60);

/// One contender's timed moves in one round.
struct Chunk {
    elapsed: Duration,
    seen: usize,
    dropped: u64,
}

#[derive(Default)]
struct Totals {
    per_move: Vec<f64>,
    ratios: Vec<f64>,
    moves: usize,
    seen: usize,
    dropped: u64,
}

pub async fn run(plan: Plan, backends: &[BackendKind]) -> TracerCost {
    let mut contenders = vec![None];
    contenders.extend(backends.iter().copied().map(Some));
    let mut totals: HashMap<Option<BackendKind>, Totals> = HashMap::new();
    let mut failures = Vec::new();
    let setup = ip(&["netns", "add", NETNS])
        .and_then(|()| ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", "mv1"]));
    if let Err(why) = setup {
        failures.push(why);
        cleanup();
        return TracerCost {
            contenders: vec![],
            failures,
        };
    }
    for round in 0..plan.rounds {
        let moves = plan.moves_in(round);
        let mut times = HashMap::new();
        for tracer in rotated(&contenders, round) {
            match chunk(tracer, moves).await {
                Ok(c) => {
                    times.insert(tracer, c.elapsed);
                    if moves > 0 {
                        let t = totals.entry(tracer).or_default();
                        t.per_move.push(c.elapsed.as_secs_f64() / moves as f64);
                        t.moves += moves;
                        t.seen += c.seen;
                        t.dropped += c.dropped;
                    }
                    info(format_args!("tracer cost round {round} {}: {moves} moves in {:.2}s, {} events, {} dropped",
                        label(tracer),
                        c.elapsed.as_secs_f64(),
                        c.seen,
                        c.dropped
                    ));
                }
                Err(why) => failures.push(format!("round {round}, {}: {why}", label(tracer))),
            }
        }
        let none = times.get(&None).filter(|none| !none.is_zero());
        if let Some(none) = none {
            for (tracer, elapsed) in times.iter().filter(|(t, _)| t.is_some()) {
                let ratio = elapsed.as_secs_f64() / none.as_secs_f64();
                totals.entry(*tracer).or_default().ratios.push(ratio);
            }
        }
    }
    cleanup();
    let contenders = contenders
        .into_iter()
        .map(|tracer| {
            let t = totals.remove(&tracer).unwrap_or_default();
            if tracer.is_some() && (t.seen != t.moves || t.dropped != 0) {
                failures.push(format!(
                    "{}: {} move events for {} moves, {} dropped",
                    label(tracer),
                    t.seen,
                    t.moves,
                    t.dropped
                ));
            }
            MoveCost {
                tracer: label(tracer),
                per_move: Samples::of_values(t.per_move),
                ratio_to_none: tracer.map(|_| Samples::of_values(t.ratios)),
                moves: t.moves,
                events_seen: t.seen,
                dropped: t.dropped,
            }
        })
        .collect();
    TracerCost {
        contenders,
        failures,
    }
}

fn label(tracer: Option<BackendKind>) -> String {
    tracer.map_or_else(|| "none".to_string(), |b| b.to_string())
}

fn is_our_move(e: &Event) -> bool {
    let named = |p: &Option<netguard::event::Place>| {
        p.as_ref().and_then(|p| p.name.as_deref()) == Some(DEVICE)
    };
    e.kind == EventKind::Move && (named(&e.from) || named(&e.to))
}

/// `moves` moves with `tracer` attached (attaching and detaching untimed).
async fn chunk(tracer: Option<BackendKind>, moves: usize) -> Result<Chunk, String> {
    let trace = match tracer {
        Some(backend) => Some(Trace::start(backend).await?),
        None => None,
    };
    let netns = format!("/run/netns/{NETNS}");
    moves::back_and_forth(DEVICE, &netns, WARM_UP_MOVES).await?;
    if let Some(trace) = &trace {
        // The warm-up's last events may still be on their way (netlink's certainly): count
        // them in before the mark, or they would be counted as the timed moves' events.
        wait_for_moves(trace, 0, WARM_UP_MOVES).await;
    }
    let mark = trace.as_ref().map_or(0, Trace::mark);
    let elapsed = moves::back_and_forth(DEVICE, &netns, moves).await?;
    let Some(trace) = trace else {
        return Ok(Chunk {
            elapsed,
            seen: 0,
            dropped: 0,
        });
    };
    let seen = wait_for_moves(&trace, mark, moves).await;
    let dropped = trace.dropped().await;
    trace.stop().await;
    Ok(Chunk {
        elapsed,
        seen,
        dropped,
    })
}

/// Waits (up to [`EVENTS_WAIT`]) until the tracer has handed out `moves` move events of the
/// device since `mark`; how many it has.
async fn wait_for_moves(trace: &Trace, mark: usize, moves: usize) -> usize {
    trace
        .wait_for(mark, moves, EVENTS_WAIT, "move events", is_our_move)
        .await
        .map_or_else(|_| trace.count(mark, is_our_move), |found| found.len())
}
