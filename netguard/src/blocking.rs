//! Blocking work that cannot move to `spawn_blocking` (it borrows), kept off the runtime.

/// Runs blocking work (a ledger write or fsync, a /proc scan) on data the async caller only
/// borrows (the ledger from its lock guard), which `spawn_blocking` cannot take. On a
/// multi-threaded runtime (the agent's) the worker thread leaves the runtime for the time of
/// the call, so the tracer, the API and the timers keep running on the other workers.
/// Elsewhere (a command's single-threaded runtime, plain code) it simply runs.
pub(crate) fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
