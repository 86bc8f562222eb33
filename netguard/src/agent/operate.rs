//! Operations through the agent's socket: the CLI's and the runtimes'. Each holds the ledger
//! while it works, so operations, passes and `status` see each other whole and in order.

use std::sync::Arc;

use tokio::sync::MutexGuard;
use tokio::time::Instant;

use super::Shared;
use crate::control::{self, Operation, Reply};
use crate::ledger::Ledger;
use crate::runtime_failures;

/// `operated_at` while an operation answered already is being recorded: newer than any rows.
const RECORDING: u64 = u64::MAX;

impl Shared {
    /// Carries out `operation`. A CNI ADD is answered as soon as the ledger is held, and
    /// recorded after: the runtime waits for the answer before it goes on with the container,
    /// and the answer does not depend on the recording (the plugin prints prevResult and exits
    /// 0 whatever netguard makes of it). Whatever comes next (the container's DEL, its hooks,
    /// `status`) waits for the ledger, so it finds the attachment recorded; a recording that
    /// fails is logged and noted for `status`, as the plugin would have.
    pub(super) async fn operate(self: &Arc<Self>, operation: Operation) -> Result<Reply, String> {
        if self.observe_only
            && matches!(
                operation,
                Operation::Lend { .. }
                    | Operation::LendContainer { .. }
                    | Operation::Reclaim { .. }
                    | Operation::Restore { dry_run: false }
            )
        {
            return Err(
                "the agent runs with --observe-only: it changes nothing in the kernel \
                 (restart it without --observe-only, or use `restore --dry-run`)"
                    .to_string(),
            );
        }
        let asked = Instant::now();
        let Operation::CniAdd { attachment } = &operation else {
            let ledger = self.ledger.lock().await;
            return self.carry_out(ledger, &operation, asked, false).await;
        };
        let answer = Reply {
            ok: true,
            text: format!("recording {attachment}; `netguard status` shows it guarded"),
            detail: serde_json::json!({ "recording": attachment.to_string() }),
        };
        let (held, ledger_held) = tokio::sync::oneshot::channel();
        let shared = self.clone();
        tokio::spawn(async move {
            let ledger = shared.ledger.lock().await;
            // A `status` asked from now on waits for the ledger, so that it shows the recording.
            shared.set_operated_at(RECORDING);
            let _ = held.send(());
            // Its reply went out already; a failure is noted by `carry_out`.
            let _ = shared.carry_out(ledger, &operation, asked, true).await;
        });
        // Answered once the ledger is held, so that nothing the runtime sends next (its DEL, a
        // hook) can take the ledger first.
        ledger_held.await.map_err(|_| {
            "the agent's recording task ended before it held the ledger".to_string()
        })?;
        Ok(answer)
    }

    /// `operation` with the ledger held (and released at the end). When its caller was
    /// `answered` already, a failure is logged and noted for `status` before the ledger is
    /// released, so that a `status` waiting for the ledger shows it.
    async fn carry_out(
        &self,
        mut ledger: MutexGuard<'_, Ledger>,
        operation: &Operation,
        asked: Instant,
        answered: bool,
    ) -> Result<Reply, String> {
        let waited = asked.elapsed();
        self.fold_events(&mut ledger, self.host_inode);
        let reply = control::execute(operation, &mut ledger, &self.restorer)
            .await
            .map_err(|e| e.to_string());
        if answered {
            self.note_failure(operation, &reply);
        }
        self.set_operated_at(ledger.revision());
        drop(ledger);
        // What a runtime's start pays for netguard: the wait for the ledger and the work.
        tracing::debug!(
            "{}: waited {waited:?} for the ledger, done in {:?}",
            operation.name(),
            asked.elapsed() - waited
        );
        // Whatever changed may need a pass (a lend pins nothing the reconciler should keep).
        // Not after a runtime's: a pass then would hold the ledger while the container's
        // next hook waits for it, and has nothing to repair.
        if !operation.from_a_runtime() {
            self.wake.notify_one();
        }
        reply
    }

    fn note_failure(&self, operation: &Operation, reply: &Result<Reply, String>) {
        let why = match reply {
            Ok(reply) if reply.ok => return,
            Ok(reply) => reply.text.replace('\n', "; "),
            Err(why) => why.clone(),
        };
        let call = operation.name();
        tracing::warn!("{call}: {why}");
        if let Some(state_dir) = self.info().state_dir {
            if let Err(e) = runtime_failures::note(&state_dir, &call, &why) {
                tracing::warn!("{call}: cannot note the failure for `status`: {e}");
            }
        }
    }

    fn set_operated_at(&self, revision: u64) {
        *self.operated_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(revision);
    }
}
