//! Flapping: a guarded thing lost again soon after each restore is repaired less and less
//! often (1 s, doubling, at most 5 min), so that a fight with whatever keeps removing it costs
//! little; the back-off ends once a restore has held for [`STEADY`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::action::Action;
use super::plan::{Item, Target};

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

    /// `target` was restored at `now`.
    pub fn restored(&mut self, target: &Target, now: Instant) {
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
    pub fn intact(&mut self, target: &Target, now: Instant) {
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
