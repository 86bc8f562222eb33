//! Flapping: a guarded thing lost again soon after each restore is repaired less and less
//! often (1 s, doubling, at most 5 min), so that a fight with whatever keeps removing it costs
//! little; the back-off ends once a restore has held for [`STEADY`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::action::Action;
use super::plan::{Item, Target};
use super::Outcome;

/// The first wait after a restore did not hold.
const FIRST: Duration = Duration::from_secs(1);
/// The longest wait.
const LONGEST: Duration = Duration::from_secs(300);
/// Lost again within this long after a restore: the restore did not hold.
const STEADY: Duration = Duration::from_secs(30);

/// Whether a repair re-creates a lost link: the losses that back off. A lost route or bridge
/// port is put back every time, and so is a NIC's name: a NIC comes home because someone lent
/// it or its driver re-bound it, and a rename by someone at home is adopted, never fought.
pub fn restores_a_loss(item: &Item) -> bool {
    item.actions.iter().any(|a| {
        matches!(
            a,
            Action::CreateVeth { .. } | Action::CreateVlan { .. } | Action::CreateMacvlan { .. }
        )
    })
}

#[derive(Debug, Clone, Copy)]
struct Flap {
    restored_at: Instant,
    /// The current wait; zero when not flapping.
    wait: Duration,
    /// No repair before then.
    until: Option<Instant>,
    /// Restores that did not hold, in a row.
    times: u32,
}

/// The back-off of every guarded thing restored lately.
#[derive(Debug, Default)]
pub struct Flaps(HashMap<Target, Flap>);

impl Flaps {
    /// Whether a repair of `target` planned at `now` must wait; the reason if so. A repair
    /// needed again soon after the last restore starts (or doubles) the wait.
    pub fn hold(&mut self, target: &Target, now: Instant) -> Option<String> {
        let flap = self.0.get_mut(target)?;
        if flap.until.is_none() {
            let lasted = now.saturating_duration_since(flap.restored_at);
            if lasted >= STEADY {
                self.0.remove(target);
                return None;
            }
            flap.wait = if flap.wait.is_zero() {
                FIRST
            } else {
                (flap.wait * 2).min(LONGEST)
            };
            flap.times += 1;
            flap.until = Some(now + flap.wait);
        }
        let until = flap.until?;
        if now >= until {
            return None;
        }
        Some(format!(
            "lost again soon after each of {} restores: next repair in {:.0?} (back-off {:?})",
            flap.times,
            until - now,
            flap.wait
        ))
    }

    /// Notes how a planned `item` came out at `now`; returns why its target is flapping, if
    /// it is. A repair of a loss that failed midway counts as a restore that did not hold:
    /// the link was lost again while being re-created, which is the fight back-off is for.
    /// A failure keeps its own reason in status.
    pub fn note(&mut self, item: &Item, outcome: Outcome, now: Instant) -> Option<String> {
        let target = &item.target;
        match outcome {
            Outcome::Restored | Outcome::Failed if restores_a_loss(item) => {
                self.restored(target, now);
            }
            Outcome::Restored | Outcome::Waiting => {}
            Outcome::Intact => self.intact(target, now),
            _ => return None,
        }
        if outcome == Outcome::Failed {
            return None;
        }
        self.flapping(target)
    }

    /// `target` was restored at `now`.
    fn restored(&mut self, target: &Target, now: Instant) {
        let flap = self.0.entry(target.clone()).or_insert(Flap {
            restored_at: now,
            wait: Duration::ZERO,
            until: None,
            times: 0,
        });
        flap.restored_at = now;
        flap.until = None;
    }

    /// `target` was found whole at `now`: a restore that held for [`STEADY`] ends its back-off.
    fn intact(&mut self, target: &Target, now: Instant) {
        if self
            .0
            .get(target)
            .is_some_and(|f| now.saturating_duration_since(f.restored_at) >= STEADY)
        {
            self.0.remove(target);
        }
    }

    /// Whether `target` was restored lately (until its restore held for [`STEADY`]): a pass
    /// must look at it, whole or not.
    pub fn follows(&self, target: &Target) -> bool {
        self.0.contains_key(target)
    }

    /// Why `target` shows as flapping, if it does: restores of it have not held lately.
    pub fn flapping(&self, target: &Target) -> Option<String> {
        let flap = self.0.get(target).filter(|f| f.times > 0)?;
        Some(format!(
            "lost again soon after each of {} restores; repairs back off ({:?} now)",
            flap.times, flap.wait
        ))
    }

    /// How long until the earliest held repair may run.
    pub fn next_due(&self, now: Instant) -> Option<Duration> {
        self.0
            .values()
            .filter_map(|f| f.until)
            .min()
            .map(|until| until.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LinkKey, Locator};

    fn target() -> Target {
        Target::Link {
            kind: "veth",
            key: LinkKey {
                netns: Locator::Host,
                name: "vh0".into(),
            },
        }
    }

    #[test]
    fn restores_that_do_not_hold_back_off_doubling_up_to_five_minutes() {
        let t = target();
        let mut flaps = Flaps::default();
        let start = Instant::now();
        assert_eq!(
            flaps.hold(&t, start),
            None,
            "never restored: repaired at once"
        );
        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..12 {
            flaps.restored(&t, now);
            // Lost again a moment later.
            now += Duration::from_millis(100);
            assert!(flaps.hold(&t, now).is_some());
            let wait = flaps.next_due(now).unwrap();
            waits.push(wait.as_secs_f64().round() as u64);
            assert!(flaps.flapping(&t).is_some());
            now += wait;
            assert_eq!(flaps.hold(&t, now), None, "due again after the wait");
        }
        assert_eq!(&waits[..10], &[1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(waits[11], 300);
    }

    /// The repair of vh0 that re-creates the pair.
    fn re_creation() -> Item {
        let t = target();
        let Target::Link { key, .. } = &t else {
            unreachable!()
        };
        Item {
            actions: vec![Action::CreateVeth {
                netns: key.netns.clone(),
                name: key.name.clone(),
                mac: None,
                mtu: None,
                peer: "eth0".into(),
                peer_netns: key.netns.clone(),
                peer_mac: None,
                peer_mtu: None,
            }],
            target: t,
            verdict: super::super::plan::Verdict::Repair,
            reason: None,
            after: None,
        }
    }

    #[test]
    fn a_repair_that_failed_because_the_link_went_again_midway_still_backs_off() {
        let item = re_creation();
        let mut flaps = Flaps::default();
        let mut now = Instant::now();
        assert_eq!(flaps.note(&item, Outcome::Restored, now), None);
        now += Duration::from_millis(100);
        assert!(flaps.hold(&item.target, now).is_some(), "lost at once: 1 s");
        now += FIRST;
        assert_eq!(flaps.hold(&item.target, now), None);
        // The pair is deleted while its repair configures it: the repair fails, and the
        // failure (not the back-off) is what status shows.
        assert_eq!(flaps.note(&item, Outcome::Failed, now), None);
        now += Duration::from_millis(5);
        assert!(
            flaps.hold(&item.target, now).is_some(),
            "lost again right after a repair: the wait doubles, not a repair at once"
        );
        assert_eq!(flaps.next_due(now), Some(FIRST * 2));
    }

    #[test]
    fn a_restore_that_holds_ends_the_back_off() {
        let t = target();
        let mut flaps = Flaps::default();
        let mut now = Instant::now();
        flaps.restored(&t, now);
        now += Duration::from_secs(1);
        assert!(flaps.hold(&t, now).is_some());
        now += Duration::from_secs(1);
        assert_eq!(flaps.hold(&t, now), None);
        flaps.restored(&t, now);
        now += STEADY;
        flaps.intact(&t, now);
        assert_eq!(flaps.flapping(&t), None);
        // Lost long after: repaired at once.
        assert_eq!(flaps.hold(&t, now + STEADY), None);
    }
}
