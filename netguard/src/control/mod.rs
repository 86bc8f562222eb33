//! What an operator asks of netguard besides watching: guard links, stop guarding them, lend
//! and reclaim NICs, restore now; and what container runtimes report ([`runtime`]). Carried out on the ledger by the agent when one runs (so its
//! ledger stays the only writer), else by the command itself.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::capture::{self, cni, LearnError};
use crate::inventory::InventoryError;
use crate::ledger::{ContainerError, Ledger, LedgerError, Locator};
pub mod container;
pub mod lend;
pub mod runtime;

use crate::netns::NetnsError;
use crate::restore::{RestoreError, Restorer};
use crate::runtime::cni_plugin::{AttachmentRef, GcAttachment};
use crate::runtime::oci_hook::ContainerEvent;
use lend::LendError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "kebab-case")]
pub enum Operation {
    /// Guard every link of these netns (and their host sides) as they are now.
    Learn {
        netns: Vec<PathBuf>,
    },
    /// Guard pod interfaces from CNI result files (a file, or every file of a directory).
    ImportCni {
        path: PathBuf,
    },
    /// Stop guarding a link (in `netns`, else wherever the name is unique).
    Forget {
        name: String,
        netns: Option<PathBuf>,
    },
    /// Stop guarding a NIC, by name (home or current) or permanent MAC.
    ForgetNic {
        nic: String,
    },
    Lend {
        iface: String,
        netns: PathBuf,
        name: Option<String>,
        persistent: bool,
    },
    Reclaim {
        iface: String,
    },
    /// One restore pass; with `dry_run` only the plan.
    Restore {
        dry_run: bool,
    },
    /// Guard the links of a container's netns (default: the one it runs in), bound to the
    /// container so that they follow it to its next netns (its OCI hooks tell when).
    LearnContainer {
        #[serde(default)]
        netns: Option<PathBuf>,
        /// Its ID or a unique prefix of it.
        container: String,
    },
    /// Lend a NIC to a container (ID or unique prefix): into its netns now, and again into
    /// each new netns it starts in.
    LendContainer {
        iface: String,
        container: String,
        name: Option<String>,
    },
    /// The chained CNI plugin's ADD: guard the attachment.
    CniAdd {
        attachment: AttachmentRef,
    },
    /// CNI DEL: release it.
    CniDel {
        attachment: AttachmentRef,
    },
    /// CNI GC: release this network's attachments not listed as valid.
    CniGc {
        network: String,
        valid: Vec<GcAttachment>,
    },
    /// An OCI hook stage of a container.
    Container {
        event: ContainerEvent,
    },
}

impl Operation {
    /// A short name for logs (a hook's with its stage).
    pub fn name(&self) -> String {
        match self {
            Operation::Container { event } => format!("hook {:?} of {}", event.stage, event.id),
            Operation::CniAdd { attachment } => format!("CNI ADD of {attachment}"),
            Operation::CniDel { attachment } => format!("CNI DEL of {attachment}"),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v["operation"].as_str().map(String::from))
                .unwrap_or_default(),
        }
    }

    /// Sent by a container runtime (the CNI plugin, an OCI hook), which waits for the answer
    /// before the container goes on. Such an operation leaves nothing for a restore pass to
    /// repair (a createRuntime that re-attaches runs its own).
    pub fn from_a_runtime(&self) -> bool {
        matches!(
            self,
            Operation::CniAdd { .. }
                | Operation::CniDel { .. }
                | Operation::CniGc { .. }
                | Operation::Container { .. }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Learn(#[from] LearnError),
    #[error(transparent)]
    Cni(#[from] cni::CniError),
    #[error(transparent)]
    Lend(#[from] LendError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("no guarded link is named {name}{}: see `netguard status`", .netns.as_ref().map(|n| format!(" in {}", n.display())).unwrap_or_default())]
    NotGuarded {
        name: String,
        netns: Option<PathBuf>,
    },
    #[error("no guarded NIC is named {0} or has that permanent MAC: see `netguard status`")]
    NicNotGuarded(String),
    #[error("{name} is guarded in several netns ({places}): say which with --netns")]
    Ambiguous { name: String, places: String },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("{what}: the runtime gave no netns")]
    NoNetns { what: String },
}

/// What an operation did: text for people, the same as JSON for programs, and whether
/// everything it touched is as it should be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub text: String,
    pub detail: serde_json::Value,
}

impl Reply {
    fn done(text: String, detail: impl Serialize) -> Reply {
        Reply {
            ok: true,
            text,
            detail: serde_json::to_value(detail).unwrap_or_default(),
        }
    }
}

/// Carries out `operation`; the ledger is saved afterwards.
pub async fn execute(
    operation: &Operation,
    ledger: &mut Ledger,
    restorer: &Restorer,
) -> Result<Reply, ControlError> {
    let pool = restorer.pool();
    let reply = match operation {
        Operation::Learn { netns } => {
            let locators: Vec<Locator> = netns.iter().map(|p| Locator::Path(p.clone())).collect();
            let learned = capture::learn(pool, ledger, &locators).await?;
            // Guarding nothing is a failure to say, not a success with a zero in it.
            let mut text = match learned.guarded.len() {
                0 => "guarding nothing: no link in the given netns could be guarded".to_string(),
                n => format!("guarding {n} link(s)"),
            };
            for key in &learned.guarded {
                text += &format!("\n  {key}");
            }
            for skipped in &learned.skipped {
                text += &format!("\n  skipped: {skipped}");
            }
            Reply {
                ok: !learned.guarded.is_empty(),
                ..Reply::done(text, &learned)
            }
        }
        Operation::ImportCni { path } => {
            let files = if path.is_dir() {
                cni::read_dir(path)?
            } else {
                vec![cni::read(path)]
            };
            let mut lines = Vec::new();
            let mut ok = true;
            for file in files {
                let imported = match file {
                    Ok(attachment) => capture::import_cni(pool, ledger, &attachment)
                        .await
                        .map_err(ControlError::from),
                    Err(e) => Err(e.into()),
                };
                match imported {
                    Ok(key) => lines.push(format!("guarding {key}")),
                    Err(e) => {
                        ok = false;
                        lines.push(format!("error: {e}"));
                    }
                }
            }
            Reply {
                ok,
                text: lines.join("\n"),
                detail: serde_json::json!(lines),
            }
        }
        Operation::Forget { name, netns } => {
            let locator = match netns {
                Some(path) => Locator::Path(path.clone()),
                None => unique_locator(ledger, name)?,
            };
            if !ledger.forget_link(&locator, name) {
                return Err(ControlError::NotGuarded {
                    name: name.clone(),
                    netns: netns.clone(),
                });
            }
            Reply::done(
                format!("no longer guarding {name} in {locator}"),
                serde_json::json!({ "forgot": name }),
            )
        }
        Operation::ForgetNic { nic } => match ledger.forget_nic(nic) {
            Some(identity) => Reply::done(
                format!("no longer guarding NIC {nic} ({identity})"),
                serde_json::json!({ "forgot": nic }),
            ),
            None => return Err(ControlError::NicNotGuarded(nic.clone())),
        },
        Operation::Lend {
            iface,
            netns,
            name,
            persistent,
        } => {
            let to = (netns.as_path(), None);
            let text =
                lend::lend(restorer, ledger, iface, to, name.as_deref(), *persistent).await?;
            Reply::done(text.clone(), serde_json::json!({ "lent": text }))
        }
        Operation::LendContainer {
            iface,
            container,
            name,
        } => {
            let text =
                container::lend_to(restorer, ledger, iface, container, name.as_deref()).await?;
            Reply::done(text.clone(), serde_json::json!({ "lent": text }))
        }
        Operation::Reclaim { iface } => {
            let text = lend::reclaim(restorer, ledger, iface).await?;
            Reply::done(text.clone(), serde_json::json!({ "reclaimed": text }))
        }
        Operation::Restore { dry_run: true } => {
            let plan = restorer.dry_run(ledger).await?;
            Reply::done(plan.to_string(), &plan)
        }
        Operation::Restore { dry_run: false } => {
            let report = restorer.pass(ledger).await?;
            let ok = report.broken().next().is_none();
            Reply {
                ok,
                text: report.to_string(),
                detail: serde_json::to_value(&report).unwrap_or_default(),
            }
        }
        Operation::LearnContainer { netns, container } => {
            runtime::learn_container(ledger, restorer, netns.as_deref(), container).await?
        }
        Operation::CniAdd { attachment } => runtime::cni_add(ledger, restorer, attachment).await?,
        Operation::CniDel { attachment } => runtime::cni_del(ledger, attachment, "CNI DEL"),
        Operation::CniGc { network, valid } => runtime::cni_gc(ledger, network, valid),
        Operation::Container { event } => runtime::container(ledger, restorer, event).await?,
    };
    crate::fault::point("before-save");
    if operation.from_a_runtime() {
        // A container start waits on this, and what a runtime reports lives no longer than
        // its netns: a crash of the machine ends both, so the journal written (not fsynced)
        // is enough; an agent that crashes finds it at its next open. The next pass fsyncs.
        ledger.ensure_written()?;
    } else {
        ledger.save()?;
    }
    Ok(reply)
}

/// The one netns a link named `name` is guarded in.
fn unique_locator(ledger: &Ledger, name: &str) -> Result<Locator, ControlError> {
    let places: Vec<Locator> = ledger
        .links()
        .filter(|l| l.spec.name == name)
        .map(|l| l.spec.netns.clone())
        .collect();
    match places.as_slice() {
        [] => Err(ControlError::NotGuarded {
            name: name.into(),
            netns: None,
        }),
        [one] => Ok(one.clone()),
        many => Err(ControlError::Ambiguous {
            name: name.into(),
            places: many
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
