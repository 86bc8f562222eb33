//! Kill points for the fault tests (`tests/vm/faults.rs`): with the `fault-points` feature
//! (never in release or package builds), `NETGUARD_FAULT=POINT:N` makes the process SIGKILL
//! itself the Nth time it reaches `POINT`, so a test can stop the agent at an exact step of a
//! repair and check what a restart makes of it. Every point reached is logged, which is how a
//! test learns the points a repair passes through. Without the feature, [`point`] is nothing.
//!
//! The points: `journalled` (a ledger commit that a kernel change relies on is on disk),
//! `temp-named` (a device just got its temporary `ngtmp*` name), `action` (one action carried
//! out and verified), `before-save` (a pass or operation that changed something is about to
//! save the ledger).

#[cfg(feature = "fault-points")]
mod armed {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    /// The point and hit count `NETGUARD_FAULT` names, read once.
    fn target() -> &'static Option<(String, u32)> {
        static TARGET: OnceLock<Option<(String, u32)>> = OnceLock::new();
        TARGET.get_or_init(|| {
            let spec = std::env::var("NETGUARD_FAULT").ok()?;
            let parsed = spec
                .rsplit_once(':')
                .and_then(|(name, n)| Some((name.to_string(), n.parse().ok()?)));
            if parsed.is_none() {
                tracing::error!("NETGUARD_FAULT={spec} is not POINT:N; no kill point armed");
            }
            parsed
        })
    }

    pub fn point(name: &str) {
        static HITS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);
        let hit = {
            let mut hits = HITS.lock().unwrap_or_else(|p| p.into_inner());
            let n = hits
                .get_or_insert_with(HashMap::new)
                .entry(name.to_string())
                .or_default();
            *n += 1;
            *n
        };
        tracing::info!("fault point {name}:{hit}");
        if target()
            .as_ref()
            .is_some_and(|(want, n)| want == name && *n == hit)
        {
            tracing::warn!("fault point {name}:{hit} armed: SIGKILL");
            // SAFETY: signalling ourselves; SIGKILL ends the process where it stands, no
            // destructor or flush runs, as when an operator or the OOM killer does it.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

/// A kill point (see the module comment).
#[cfg(feature = "fault-points")]
pub use armed::point;

/// A kill point: nothing without the `fault-points` feature.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub fn point(_name: &str) {}
