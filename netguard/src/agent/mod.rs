//! The agent: one task per concern. The tracer's events update the ledger and wake the
//! reconciler; the reconciler runs a restore pass on each wake-up and every interval; a watcher
//! wakes it when netns bind mounts come and go; the API answers `status` and operations.
//! A stop request (SIGTERM/SIGINT, from the caller) lets the pass under way finish (at most
//! [`PASS_GRACE`]), saves the ledger and ends it; a second one ends it at once (the journal
//! already holds every change, so the disk stays consistent).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use crate::api::{self, ApiError, Request};
use crate::event::Event;
use crate::inventory::Pool;
use crate::ledger::{Ledger, LedgerError, LedgerOptions};
use crate::metrics::{Metrics, MetricsError};
use crate::outcomes::Outcomes;
use crate::restore::Restorer;
use crate::status::{self, AgentInfo, LastEvents, Status, StatusRow};
use crate::trace::{BackendChoice, TraceError, TraceOptions, Tracer};

mod cni_cache;
mod lock;
mod operate;
mod pass;
mod wake;
mod watch;

use cni_cache::watch_cni_caches;
use lock::lock_ledger;
pub use lock::{LockError, StateLock};
use pass::reconcile;
use wake::WakeIndex;
use watch::watch_bind_mounts;

/// Links repaired at once; the kernel serialises most of the work under RTNL anyway.
const CONCURRENCY: usize = 64;

/// How long a pod's released attachment stays listed for its next sandbox to take up.
const RELEASED_PODS_KEPT: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// How long the agent waits for a command that holds the ledger to finish.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// How long a stop request waits for the restore pass (or operation) under way.
pub const PASS_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub ledger: LedgerOptions,
    pub socket: PathBuf,
    pub backend: BackendChoice,
    pub host_netns: Option<PathBuf>,
    pub interval: Duration,
    /// How often every netns is read and every link planned, announced or not.
    pub full_pass_every: Duration,
    /// Trace, plan and log what would be done; change nothing in the kernel.
    pub observe_only: bool,
    /// Where to serve Prometheus metrics; `None`: nowhere.
    pub metrics: Option<SocketAddr>,
    /// libcni result cache directories to follow (`--cni-cache`).
    pub cni_caches: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("{0}; the agent stops (exit 1) so that its service manager restarts it")]
    TaskEnded(String),
    #[error("stopped at once by a second signal, without waiting for the pass under way or saving the document; the journal holds every change, and the next start replays it")]
    StoppedAtOnce,
}

struct Shared {
    ledger: Mutex<Ledger>,
    /// Events the tracer saw while the ledger was held (by a pass, say), in order: whoever
    /// holds the ledger next folds them in. The tracer never waits for a pass.
    unfolded: std::sync::Mutex<Vec<Event>>,
    /// The ledger's status rows when it was last free: what `status` shows while a pass runs.
    rows: std::sync::Mutex<Vec<StatusRow>>,
    /// The ledger's revision `rows` were made from, and the one the outcomes last saw: an
    /// idle pass changes neither, and makes neither again.
    rows_at: std::sync::Mutex<Option<u64>>,
    told_at: std::sync::Mutex<Option<u64>>,
    /// The ledger's revision after the last operation: `status` must show what an operation
    /// answered (a CNI ADD's attachment), pass or no pass.
    operated_at: std::sync::Mutex<Option<u64>>,
    /// Set by a stop request: no new pass starts.
    stopping: AtomicBool,
    restorer: Restorer,
    last_events: std::sync::Mutex<LastEvents>,
    info: std::sync::Mutex<AgentInfo>,
    wake: Notify,
    observe_only: bool,
    /// The plan last logged in observe-only mode (logged again only when it changes).
    last_plan: std::sync::Mutex<String>,
    /// When the earliest wake-up not yet taken by a pass happened (restore latency runs from it).
    woken_at: std::sync::Mutex<Option<Instant>>,
    outcomes: std::sync::Mutex<Outcomes>,
    metrics: Option<Arc<Metrics>>,
    /// The host netns (init_net or its stand-in).
    host_inode: u64,
    /// What the guarded links refer to: which events call for a pass.
    wake_index: std::sync::Mutex<WakeIndex>,
}

impl Shared {
    /// Wakes the reconciler for something that happened `at`.
    fn wake_for(&self, at: Instant) {
        let mut woken = self.woken_at.lock().unwrap_or_else(|p| p.into_inner());
        *woken = Some(woken.map_or(at, |earlier| earlier.min(at)));
        drop(woken);
        self.wake.notify_one();
    }

    /// Folds in the events the tracer queued; `true` if one calls for a pass (about a guarded
    /// device, or about what a guarded link needs: `wake.rs`).
    fn fold_events(&self, ledger: &mut Ledger, host_inode: u64) -> bool {
        let events = std::mem::take(&mut *self.unfolded.lock().unwrap_or_else(|p| p.into_inner()));
        let mut calls_for_pass = false;
        let mut index = self.wake_index.lock().unwrap_or_else(|p| p.into_inner());
        for event in &events {
            let guarded = ledger.observe(event, host_inode);
            if guarded {
                tracing::debug!(
                    "event about a guarded device: {:?} {:?}",
                    event.kind,
                    event.current_name()
                );
            }
            // Once one calls for a pass, the rest need not be asked (nor the index rebuilt
            // after each change in a burst).
            calls_for_pass = calls_for_pass
                || guarded
                || index.concerns_us(ledger.content(), ledger.revision(), event, host_inode);
        }
        calls_for_pass
    }

    /// Keeps the rows `status` shows while the ledger is busy.
    fn keep_rows(&self, ledger: &Ledger) {
        let mut at = self.rows_at.lock().unwrap_or_else(|p| p.into_inner());
        if *at != Some(ledger.revision()) {
            *self.rows.lock().unwrap_or_else(|p| p.into_inner()) =
                status::ledger_rows(ledger.content());
            *at = Some(ledger.revision());
        }
    }

    fn rows_behind_an_operation(&self) -> bool {
        let operated = *self.operated_at.lock().unwrap_or_else(|p| p.into_inner());
        operated > *self.rows_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn info(&self) -> AgentInfo {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for no pass: while one runs, the rows from before it, with the events seen since
    /// (the tracer notes them at once); unless the rows are older than the last operation,
    /// whose answer they must show: then for the pass under way.
    async fn status(&self) -> Status {
        let ledger = match self.ledger.try_lock() {
            Ok(ledger) => Some(ledger),
            Err(_) if self.rows_behind_an_operation() => Some(self.ledger.lock().await),
            Err(_) => None,
        };
        if let Some(ledger) = ledger {
            self.keep_rows(&ledger);
        }
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let rows = status::with_last_events(
            rows,
            &self.last_events.lock().unwrap_or_else(|p| p.into_inner()),
        );
        Status {
            agent: Some(self.info()),
            rows,
            runtime_failures: Vec::new(),
        }
    }
}

/// Runs the agent until a stop request arrives on `stop` (one message per signal).
pub async fn run(
    options: AgentOptions,
    mut stop: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), AgentError> {
    let _lock = lock_ledger(&options).await?;
    // Before the ledger is opened (and perhaps rebuilt): an agent refused is one that
    // touched nothing.
    let listener = api::listen(&options.socket).await?;
    let metrics = Arc::new(Metrics::new()?);
    let serve_metrics = match options.metrics {
        Some(addr) => Some(metrics.clone().serve(addr).await?),
        None => None,
    };
    let metrics = serve_metrics.is_some().then_some(metrics);
    let (ledger, opened) = Ledger::open(options.ledger.clone())?;
    tracing::info!("{}: {opened}", options.ledger.dir.display());
    let mut tracer = Tracer::start(
        options.backend,
        TraceOptions {
            host_netns: options.host_netns.clone(),
        },
    )
    .await?;
    tracing::info!("tracing with the {} backend", tracer.backend);
    for skipped in &tracer.unavailable {
        tracing::info!("not using {skipped}");
    }
    let host_inode = tracer.resolver.host_inode();
    let pool = Arc::new(Pool::new(options.host_netns.clone()));
    let host_name = pool.host_name();
    if let Some(m) = &metrics {
        m.backend_info
            .with_label_values(&[tracer.backend.as_str()])
            .set(1);
    }
    let outcomes = Outcomes::new(metrics.clone(), &status::ledger_rows(ledger.content()));
    let shared = Arc::new(Shared {
        unfolded: Default::default(),
        rows: std::sync::Mutex::new(status::ledger_rows(ledger.content())),
        rows_at: Default::default(),
        operated_at: Default::default(),
        told_at: Default::default(),
        host_inode,
        wake_index: Default::default(),
        ledger: Mutex::new(ledger),
        stopping: Default::default(),
        restorer: if options.observe_only {
            Restorer::observing(pool, CONCURRENCY)
        } else {
            Restorer::new(pool, CONCURRENCY)
        }
        .with_full_pass_every(options.full_pass_every),
        last_events: std::sync::Mutex::new(LastEvents::new(host_name)),
        info: std::sync::Mutex::new(AgentInfo {
            pid: std::process::id(),
            backend: tracer.backend,
            unavailable: tracer.unavailable.clone(),
            started: Utc::now(),
            passes: 0,
            events: 0,
            state_dir: std::path::absolute(&options.ledger.dir).ok(),
            host_netns: options.host_netns.clone(),
            host_netns_inode: Some(host_inode),
        }),
        wake: Notify::new(),
        woken_at: Default::default(),
        outcomes: std::sync::Mutex::new(outcomes),
        metrics,
        observe_only: options.observe_only,
        last_plan: Default::default(),
    });
    if options.observe_only {
        tracing::warn!("observe-only: tracing and planning; nothing in the kernel will be changed");
    } else {
        // Devices a killed run left under a temporary name go back where they came from
        // before anything else is planned.
        let mut ledger = shared.ledger.lock().await;
        for said in shared.restorer.land_flights(&mut ledger).await {
            match said {
                Ok(done) => tracing::info!("in flight at start: {done}"),
                Err(why) => tracing::warn!("in flight at start: {why}"),
            }
        }
    }
    shared.wake_for(Instant::now());

    let mut tasks = tokio::task::JoinSet::new();
    let s = shared.clone();
    tasks.spawn(async move {
        let backend = tracer.backend.as_str();
        let mut dropped = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let event = tokio::select! {
                event = tracer.next() => event,
                _ = tick.tick() => {
                    let now = tracer.dropped();
                    if let Some(m) = &s.metrics {
                        m.tracer_dropped.with_label_values(&[backend]).inc_by(now.saturating_sub(dropped));
                    }
                    dropped = now;
                    continue;
                }
            };
            let Some(event) = event else { break };
            if let Some(m) = &s.metrics {
                m.tracer_events.with_label_values(&[backend, event.kind.as_str()]).inc();
            }
            s.last_events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .note(&event);
            s.info.lock().unwrap_or_else(|p| p.into_inner()).events += 1;
            // The event's own time: the kernel saw it before it was queued to us.
            let age = (Utc::now() - event.time).to_std().unwrap_or_default();
            s.unfolded.lock().unwrap_or_else(|p| p.into_inner()).push(event);
            let calls_for_pass = match s.ledger.try_lock() {
                Ok(mut ledger) => s.fold_events(&mut ledger, host_inode),
                // A pass holds the ledger and folds the event in when it is done; the tracer
                // goes on, and a pass follows in case the event concerns us.
                Err(_) => true,
            };
            if !calls_for_pass {
                continue;
            }
            s.wake_for(Instant::now().checked_sub(age).unwrap_or_else(Instant::now));
        }
        tracing::error!("the tracer stopped");
    });
    let s = shared.clone();
    let interval = options.interval;
    tasks.spawn(async move {
        let mut next = interval;
        loop {
            tokio::select! {
                _ = s.wake.notified() => {}
                _ = tokio::time::sleep(next) => {}
            }
            // A repair held back by flapping is due before the interval ends.
            next = reconcile(&s)
                .await
                .map_or(interval, |due| due.min(interval));
        }
    });
    let s = shared.clone();
    tasks.spawn(async move { watch_bind_mounts(&s).await });
    let s = shared.clone();
    let caches = options.cni_caches.clone();
    tasks.spawn(async move { watch_cni_caches(&s, caches).await });
    if let Some(serve) = serve_metrics {
        tasks.spawn(serve);
    }
    if let Some(period) = crate::notify::watchdog_period() {
        let s = shared.clone();
        tasks.spawn(async move { keep_watchdog_fed(&s, period).await });
    }
    let s = shared.clone();
    let socket = options.socket.clone();
    let answer = move |request: Request| {
        let (s, socket) = (s.clone(), socket.clone());
        async move {
            match request {
                Request::Status => serde_json::to_value(s.status().await).unwrap_or_default(),
                Request::Agent => serde_json::to_value(s.info()).unwrap_or_default(),
                Request::Operate {
                    operation,
                    expected,
                } => {
                    let info = s.info();
                    let answer = match expected.and_then(|e| e.differs(&info)) {
                        Some(differs) => Err(api::ApiError::OtherAgent {
                            path: socket,
                            pid: info.pid,
                            differs,
                        }
                        .to_string()),
                        None => s.operate(operation).await,
                    };
                    serde_json::to_value(answer).unwrap_or_default()
                }
            }
        }
    };
    tasks.spawn(api::serve(listener, api::Limits::default(), answer));

    crate::notify::ready(&format!(
        "guarding with the {} backend",
        shared
            .info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .backend
    ));
    // Every task runs forever: one that ends (the tracer stopped, say) is a failure, so that
    // a service manager restarts the agent.
    let failed = tokio::select! {
        _ = stop.recv() => None,
        Some(ended) = tasks.join_next() => Some(match ended {
            Ok(()) => "an agent task stopped".to_string(),
            Err(e) => format!("an agent task failed: {e}"),
        }),
    };
    crate::notify::stopping();
    if failed.is_none() {
        tracing::info!("stopping: the pass under way may finish (at most {PASS_GRACE:?}); a second signal stops at once");
        shared.stopping.store(true, Ordering::SeqCst);
        match wait_for_pass(&shared.ledger, PASS_GRACE, stop.recv()).await {
            Waited::Finished => {}
            Waited::Overdue => {
                tracing::warn!("the pass under way did not finish in {PASS_GRACE:?}; it is cut short (every change it made is journalled)")
            }
            Waited::Second => return stopped_at_once(&options.socket),
        }
    }
    // Cuts whatever still runs at its next await: each change is journalled as it is made.
    tasks.shutdown().await;
    let saved = tokio::select! {
        mut ledger = shared.ledger.lock() => {
            shared.fold_events(&mut ledger, host_inode);
            ledger.save()
        }
        _ = stop.recv() => return stopped_at_once(&options.socket),
    };
    let _ = std::fs::remove_file(&options.socket);
    saved?;
    match failed {
        Some(why) => Err(AgentError::TaskEnded(why)),
        None => {
            tracing::info!("ledger saved; stopped");
            Ok(())
        }
    }
}

fn stopped_at_once(socket: &Path) -> Result<(), AgentError> {
    let _ = std::fs::remove_file(socket);
    Err(AgentError::StoppedAtOnce)
}

#[derive(Debug, PartialEq, Eq)]
enum Waited {
    /// The pass (or operation) holding the ledger is done.
    Finished,
    /// It still runs after the grace time.
    Overdue,
    /// Another stop request came first.
    Second,
}

/// Waits until whoever holds `ledger` lets go, at most `grace`, unless `second` comes first.
async fn wait_for_pass<T>(
    ledger: &Mutex<T>,
    grace: Duration,
    second: impl std::future::Future,
) -> Waited {
    tokio::select! {
        finished = tokio::time::timeout(grace, ledger.lock()) => match finished {
            Ok(_) => Waited::Finished,
            Err(_) => Waited::Overdue,
        },
        _ = second => Waited::Second,
    }
}

/// Tells the service manager the agent is alive as long as the ledger can be had within half a
/// watchdog period: a reconciler stuck holding it (or a runtime that stopped) lets the
/// watchdog fire and the agent be restarted.
async fn keep_watchdog_fed(shared: &Shared, period: Duration) {
    loop {
        if tokio::time::timeout(period / 2, shared.ledger.lock())
            .await
            .is_ok()
        {
            crate::notify::watchdog();
        }
        tokio::time::sleep(period / 4).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass holding `lock` for `hold`.
    async fn pass(lock: &Arc<Mutex<u32>>, hold: Duration) {
        let lock = lock.clone();
        let held = Arc::new(Notify::new());
        let started = held.clone();
        tokio::spawn(async move {
            let mut guard = lock.lock().await;
            started.notify_one();
            tokio::time::sleep(hold).await;
            *guard += 1;
        });
        held.notified().await;
    }

    #[tokio::test]
    async fn a_stop_waits_for_the_pass_under_way() {
        let lock = Arc::new(Mutex::new(0));
        pass(&lock, Duration::from_millis(300)).await;
        let waited = wait_for_pass(&lock, Duration::from_secs(10), std::future::pending::<()>());
        assert_eq!(waited.await, Waited::Finished);
        assert_eq!(*lock.lock().await, 1, "the pass finished first");
    }

    #[tokio::test]
    async fn a_pass_past_the_grace_time_is_overdue() {
        let lock = Arc::new(Mutex::new(0));
        pass(&lock, Duration::from_secs(30)).await;
        let started = Instant::now();
        let waited = wait_for_pass(
            &lock,
            Duration::from_millis(200),
            std::future::pending::<()>(),
        );
        assert_eq!(waited.await, Waited::Overdue);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_second_stop_does_not_wait() {
        let lock = Arc::new(Mutex::new(0));
        pass(&lock, Duration::from_secs(30)).await;
        let second = tokio::time::sleep(Duration::from_millis(50));
        let waited = wait_for_pass(&lock, Duration::from_secs(10), second);
        assert_eq!(waited.await, Waited::Second);
    }
}
