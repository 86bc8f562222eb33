//! The systemd notification protocol (`Type=notify`, `WatchdogSec=`): readiness, watchdog
//! pings and stopping, sent to `$NOTIFY_SOCKET` when there is one and nowhere otherwise.

use std::time::Duration;

use sd_notify::NotifyState;

/// Says the agent is up (socket answering, tracer attached, first pass asked for).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// One watchdog ping.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("saving the ledger"),
    ]);
}

/// The watchdog period the service manager asked for (`WATCHDOG_USEC` for our own pid).
pub fn watchdog_period() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

fn send(states: &[NotifyState]) {
    // Without a service manager listening there is nobody to tell; a failure to tell the one
    // that listens is worth a line, not a stop.
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}
