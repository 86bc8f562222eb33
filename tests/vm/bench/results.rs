//! The VM benchmark's plan and results. The guest prints each result as a console line
//! `NGVM BENCH {json}`; `cargo xtask bench` compiles this file too (next to `stats`) and reads
//! them back, so both sides agree on one shape.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::stats::Samples;

/// How many trials the guest runs, per backend: `refunds=50,reloads=12,moves=2000,rounds=5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Timed NIC refunds (lent NIC's netns deleted -> home name again).
    pub refunds: usize,
    /// Timed e1000 reloads (-> the pod's macvlan back with its address).
    pub reloads: usize,
    /// Timed netns moves per tracer contender (there and back: an even number).
    pub moves: usize,
    /// Rounds the trials are spread over; every round runs each contender in turn, in a
    /// rotated order, so drift hits all of them alike.
    pub rounds: usize,
}

impl Plan {
    /// The share of `total` trials that timed round `round` (0-based) runs.
    pub fn share(&self, total: usize, round: usize) -> usize {
        total / self.rounds + usize::from(round < total % self.rounds)
    }

    /// Moves in timed round `round`: whole round trips, so the device ends at home.
    pub fn moves_in(&self, round: usize) -> usize {
        2 * self.share(self.moves / 2, round)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refunds={},reloads={},moves={},rounds={}",
            self.refunds, self.reloads, self.moves, self.rounds
        )
    }
}

impl FromStr for Plan {
    type Err = String;

    fn from_str(text: &str) -> Result<Plan, String> {
        let mut plan = Plan {
            refunds: 0,
            reloads: 0,
            moves: 0,
            rounds: 1,
        };
        for item in text.split(',').filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: want KEY=NUMBER"))?;
            let value: usize = value
                .parse()
                .map_err(|_| format!("{item:?}: {value:?} is not a count"))?;
            match key {
                "refunds" => plan.refunds = value,
                "reloads" => plan.reloads = value,
                "moves" => plan.moves = value,
                "rounds" => plan.rounds = value,
                _ => return Err(format!("{item:?}: unknown key {key:?}")),
            }
        }
        if plan.rounds == 0 {
            return Err("rounds=0: at least one timed round".into());
        }
        if !plan.moves.is_multiple_of(2) {
            return Err(format!(
                "moves={}: moves go there and back, want an even number",
                plan.moves
            ));
        }
        Ok(plan)
    }
}

/// One `NGVM BENCH` line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "part", rename_all = "snake_case")]
pub enum Line {
    Reaction(Reaction),
    TracerCost(TracerCost),
}

/// Benchmark 3 for one backend: the agent's reaction to a refund and to a driver reload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reaction {
    pub backend: String,
    /// `ip netns del` of the lent NIC's netns -> the NIC has its home name (and MAC) again, s.
    pub refund_home: Samples,
    /// Start of `modprobe -r e1000 && modprobe e1000` -> the pod's macvlan back with its MAC,
    /// address and default route, s.
    pub driver_reload: Samples,
    /// The part of `driver_reload` after modprobe returned (the NICs registered again), s.
    pub after_modprobe: Samples,
    /// Trials that failed, each with why (a failure ends its agent session).
    pub failures: Vec<String>,
}

/// Benchmark 4: netns moves timed with no tracer and with each backend attached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TracerCost {
    pub contenders: Vec<MoveCost>,
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveCost {
    /// `none` or the backend.
    pub tracer: String,
    /// Seconds per move, one value per timed round.
    pub per_move: Samples,
    /// Per-move time over the no-tracer time of the same round, one value per timed round.
    pub ratio_to_none: Option<Samples>,
    /// Moves made in the timed rounds.
    pub moves: usize,
    /// Move events of the moved device the tracer handed out for them.
    pub events_seen: usize,
    /// Events the tracer reported lost.
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_round_trips_and_bad_ones_are_named() {
        let plan: Plan = "refunds=5,reloads=2,moves=200,rounds=2".parse().unwrap();
        assert_eq!(plan.to_string().parse::<Plan>(), Ok(plan));
        assert!("moves=3".parse::<Plan>().unwrap_err().contains("even"));
        assert!("refunds=x".parse::<Plan>().unwrap_err().contains("count"));
        assert!("trials=2"
            .parse::<Plan>()
            .unwrap_err()
            .contains("unknown key"));
        assert!("rounds=0".parse::<Plan>().is_err());
    }

    #[test]
    fn trials_spread_over_rounds_add_up() {
        let plan: Plan = "refunds=7,moves=202,rounds=3".parse().unwrap();
        let refunds: Vec<usize> = (0..3).map(|r| plan.share(7, r)).collect();
        assert_eq!(refunds, [3, 2, 2]);
        let moves: Vec<usize> = (0..3).map(|r| plan.moves_in(r)).collect();
        assert_eq!(moves, [68, 68, 66]);
    }
}
