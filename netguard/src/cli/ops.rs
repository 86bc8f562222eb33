//! Commands that act on the ledger: through the running agent when there is one (its ledger
//! is the only writer), else directly.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use netguard::agent::StateLock;
use netguard::api::{self, ApiError, Meant, Request};
use netguard::client::{NoAgent, PATIENCE};
use netguard::config::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use netguard::control::{self, Operation, Reply};
use netguard::inventory::Pool;
use netguard::ledger::{Ledger, LedgerOptions};
use netguard::restore::Restorer;

/// Where the ledger and the agent are.
#[derive(Args, Clone)]
pub struct Place {
    /// The ledger's directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The agent's socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// A netns standing in for the host's init_net (tests).
    #[arg(long, value_name = "PATH")]
    pub host_netns: Option<PathBuf>,
}

impl Place {
    /// The agent this command means.
    pub fn meant(&self) -> api::Meant {
        api::Meant {
            state_dir: self.state_dir.clone(),
            host_netns: self.host_netns.clone(),
        }
    }

    /// A restorer and the ledger, opened here because no agent runs; the lock keeps a
    /// concurrently started agent out until we are done.
    pub async fn open_locally(&self) -> anyhow::Result<(StateLock, Ledger, Restorer)> {
        open_locally(&self.meant()).await
    }
}

async fn open_locally(meant: &Meant) -> anyhow::Result<(StateLock, Ledger, Restorer)> {
    let lock = StateLock::acquire(&meant.state_dir).await?;
    let (ledger, opened) = Ledger::open(LedgerOptions::new(&meant.state_dir))?;
    if matches!(opened, netguard::ledger::Opened::Rebuilt { .. }) {
        eprintln!("netguard: {opened}");
    }
    let restorer = Restorer::new(Arc::new(Pool::new(meant.host_netns.clone())), 64);
    Ok((lock, ledger, restorer))
}

/// What a runtime's call (CNI plugin, OCI hook) does when no agent runs: the operation is
/// carried out here, under the ledger's lock.
pub struct RunHere;

impl NoAgent for RunHere {
    fn operate(
        &self,
        meant: &Meant,
        _stdin: &[u8],
        operation: &Operation,
    ) -> Result<Reply, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        let done = runtime.block_on(async {
            tokio::time::timeout(PATIENCE, async {
                let (_lock, mut ledger, restorer) = open_locally(meant).await?;
                anyhow::Ok(control::execute(operation, &mut ledger, &restorer).await?)
            })
            .await
        });
        done.map_err(|_| format!("netguard gave no answer within {PATIENCE:?}"))?
            .map_err(|e| super::one_line(&e))
    }
}

/// Runs `operation` (by the agent if one answers) and prints its reply; exit 1 if what it
/// touched is not as it should be.
pub fn run(place: &Place, operation: Operation, json: bool) -> anyhow::Result<ExitCode> {
    super::require_root()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let reply = runtime.block_on(submit(place, &operation))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply.detail)?);
    } else if !reply.text.is_empty() {
        println!("{}", reply.text);
    }
    Ok(if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Carries out `operation` by the agent if one answers, else here under the ledger's lock.
pub async fn submit(place: &Place, operation: &Operation) -> anyhow::Result<Reply> {
    match api::request_to::<Result<Reply, String>>(
        &place.socket,
        &place.meant(),
        &Request::Operate {
            operation: operation.clone(),
            expected: None,
        },
    )
    .await
    {
        Ok(answer) => answer.map_err(anyhow::Error::msg),
        Err(ApiError::NoAgent { .. }) => {
            let (_lock, mut ledger, restorer) = place.open_locally().await?;
            Ok(control::execute(operation, &mut ledger, &restorer).await?)
        }
        Err(e) => Err(e.into()),
    }
}
